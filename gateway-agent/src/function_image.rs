//! The image functions are built from: FROM scratch, the gateway's own
//! function host (a static binary) and, when the machine has Debian's static
//! busybox, a shell and its tools. Nothing is pulled: the agent assembles the
//! root filesystem and imports it into its engine, and hands its name to every
//! build as the `FUNCTION_HOST_IMAGE` build argument.

use std::path::{Path, PathBuf};

use crate::spec::sha256_hex;

/// The build argument naming the image.
pub const BUILD_ARG: &str = "FUNCTION_HOST_IMAGE";
/// The function host's file name.
pub const BINARY: &str = "continuum-function-host";

/// Why the image cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum FunctionImageError {
    /// No function host binary was found.
    #[error("no `{BINARY}` beside the agent nor on PATH: give --function-host")]
    NotFound,
    /// It is linked dynamically: it would not start in an image FROM scratch.
    #[error("{0} is linked dynamically and cannot run FROM scratch: build it static (scripts/build-function-host.sh)")]
    Dynamic(PathBuf),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The function host to put in images: `explicit`, else the one beside the
/// running agent, else the first on PATH.
pub fn find_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    find_program(BINARY, explicit)
}

/// The program `name`: `explicit` if given, else beside the agent's own
/// executable, else on `PATH`.
pub fn find_program(name: &str, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether the ELF executable `bytes` needs a dynamic loader (has a
/// `PT_INTERP` program header). Not an ELF file: treated as dynamic.
pub fn is_dynamic(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, n: usize| bytes.get(at..at + n);
    if read(0, 4) != Some(b"\x7fELF") || read(4, 1) != Some(&[2]) || read(5, 1) != Some(&[1]) {
        return true; // not a little-endian ELF64 file
    }
    let u16_at = |at| read(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at =
        |at| read(at, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        read(phoff + i * phentsize, 4)
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
}

/// The image's root filesystem (a tar archive) and its name, which is the
/// hash of that archive.
pub fn rootfs(
    binary: &Path,
    busybox: Option<&Path>,
) -> Result<(String, Vec<u8>), FunctionImageError> {
    static_image(binary, BINARY, "continuum/function-host", busybox)
}

/// A root filesystem FROM scratch holding the static executable `binary` as
/// `/bin/<name>` (and busybox's tools when given), tagged `<repo>:<hash>`.
pub fn static_image(
    binary: &Path,
    name: &str,
    repo: &str,
    busybox: Option<&Path>,
) -> Result<(String, Vec<u8>), FunctionImageError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| FunctionImageError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let host = read(binary)?;
    if is_dynamic(&host) {
        return Err(FunctionImageError::Dynamic(binary.to_owned()));
    }
    let mut tar = tar::Builder::new(Vec::new());
    let io = |source| FunctionImageError::Io {
        path: binary.to_owned(),
        source,
    };
    for (dir, mode) in [("bin", 0o755), ("srv", 0o755), ("tmp", 0o1777)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, dir, std::io::empty()).map_err(io)?;
    }
    let mut file = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, name, data)
    };
    file(&format!("bin/{name}"), &host).map_err(io)?;
    if let Some(bb) = busybox.filter(|p| p.is_file()) {
        let bytes = read(bb)?;
        if !is_dynamic(&bytes) {
            file("bin/busybox", &bytes).map_err(io)?;
            for applet in applets(bb) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_mtime(0);
                tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
                    .map_err(io)?;
            }
        }
    }
    let bytes = tar.into_inner().map_err(io)?;
    let tag = format!("{repo}:{}", &sha256_hex(&bytes)[..16]);
    Ok((tag, bytes))
}

/// The tools busybox provides (`busybox --list`), `busybox` itself aside.
fn applets(busybox: &Path) -> Vec<String> {
    std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        // The test binary itself is linked dynamically.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_dynamic(&me));
        assert!(is_dynamic(b"#!/bin/sh\n"));
        // Debian's busybox-static (scripts/setup.sh installs it).
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            assert!(
                !is_dynamic(&bb),
                "/bin/busybox should be Debian's static busybox"
            );
        }
    }

    #[test]
    fn a_dynamic_function_host_is_refused_with_the_way_out() {
        let me = std::env::current_exe().unwrap();
        let e = rootfs(&me, None).unwrap_err().to_string();
        assert!(e.contains("linked dynamically"), "{e}");
    }
}
