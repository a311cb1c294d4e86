//! What the agent remembers of each device, across its own restarts: the
//! signature it answered, the firmware written last and the last one that
//! confirmed it runs (kept as an image, to roll back to).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::Image;

/// One device's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its signature, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The SHA-256 of the firmware written last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flashed: Option<String>,
    /// The SHA-256 of the last firmware that showed it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<String>,
    /// A firmware that did not confirm on this device, and was rolled back:
    /// it is not written again unless forced (flash wears out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// How the last flash ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct State {
    root: PathBuf,
}

/// A name for a device that is safe as a file name.
pub fn key(device: &str) -> String {
    device
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl State {
    /// The state kept under `root` (created).
    pub fn open(root: &Path) -> std::io::Result<State> {
        std::fs::create_dir_all(root.join("devices"))?;
        std::fs::create_dir_all(root.join("images"))?;
        Ok(State {
            root: root.to_owned(),
        })
    }

    fn device_path(&self, device: &str) -> PathBuf {
        self.root
            .join("devices")
            .join(format!("{}.json", key(device)))
    }

    /// What is known of `device` (nothing yet: the default).
    pub fn device(&self, device: &str) -> std::io::Result<Device> {
        match std::fs::read(self.device_path(device)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Device::default()),
            Err(e) => Err(e),
        }
    }

    /// Records `device`'s state durably.
    pub fn save(&self, device: &str, d: &Device) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(d).map_err(std::io::Error::other)?;
        write_atomically(&self.device_path(device), &bytes)
    }

    /// Keeps `image` under its hash (to roll back to).
    pub fn keep(&self, hash: &str, image: &Image) -> std::io::Result<()> {
        write_atomically(
            &self.root.join("images").join(format!("{hash}.hex")),
            image.to_hex().as_bytes(),
        )
    }

    /// The image kept under `hash`.
    pub fn image(&self, hash: &str) -> Option<Image> {
        let text =
            std::fs::read_to_string(self.root.join("images").join(format!("{hash}.hex"))).ok()?;
        Image::from_hex(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        assert_eq!(s.device("/dev/ttyACM0").unwrap(), Device::default());
        let d = Device {
            flashed: Some("ab".into()),
            ..Device::default()
        };
        s.save("/dev/ttyACM0", &d).unwrap();
        let img = Image {
            data: vec![1, 2, 3],
        };
        s.keep("ab", &img).unwrap();
        let s = State::open(dir.path()).unwrap();
        assert_eq!(s.device("/dev/ttyACM0").unwrap(), d);
        assert_eq!(s.image("ab"), Some(img));
        assert_eq!(key("/dev/tty ACM0"), "dev_tty_ACM0");
    }
}
