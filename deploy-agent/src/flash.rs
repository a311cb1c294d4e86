//! One flash, as an explicit state machine:
//! `Connecting → Syncing → Identifying → Writing → Verifying → Confirming →
//! Done | Failed{stage, reason} | RolledBack`.
//!
//! Everything that can be checked before the device is touched is checked
//! first (the image fits the board, the board has a native protocol); a
//! failure before `Writing` leaves the device as it was. After writing, the
//! program must show that it runs (a serial line matching the health
//! pattern); if it does not, the last firmware confirmed on that device is
//! written back.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::board::{show_signature, Board, Protocol};
use crate::image::Image;
use crate::serial::Link;
use crate::stk500::{Bootloader, Stk500Error};

/// The stages of a flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Opening the port and resetting the board.
    Connecting,
    /// Getting in step with the bootloader.
    Syncing,
    /// Reading the signature and checking it against the board.
    Identifying,
    /// Writing pages.
    Writing,
    /// Reading them back.
    Verifying,
    /// Waiting for the program to say it runs.
    Confirming,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Stage::Connecting => "connecting",
            Stage::Syncing => "syncing",
            Stage::Identifying => "identifying",
            Stage::Writing => "writing",
            Stage::Verifying => "verifying",
            Stage::Confirming => "confirming",
        };
        f.write_str(s)
    }
}

/// How a flash ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Written, verified and (if asked) confirmed.
    Done {
        /// The program's health line, when one was awaited.
        health: Option<String>,
    },
    /// Stopped at `stage`.
    Failed { stage: Stage, reason: String },
    /// The new firmware never confirmed; the previous confirmed one was
    /// written back (and confirmed).
    RolledBack { reason: String },
    /// The device already runs this firmware: nothing was written.
    Unchanged,
}

/// What a flash reports as it goes.
pub trait Progress {
    /// Entered `stage`; `percent` of the whole flash is done.
    fn report(&mut self, stage: Stage, percent: u8);
}

impl<F: FnMut(Stage, u8)> Progress for F {
    fn report(&mut self, stage: Stage, percent: u8) {
        self(stage, percent);
    }
}

/// How to flash.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The board the model names.
    pub board: &'a Board,
    /// The image.
    pub image: &'a Image,
    /// Read every page back after writing.
    pub verify: bool,
    /// A line the running program prints (a regular expression); none: no
    /// confirmation.
    pub health: Option<&'a regex::Regex>,
    /// How long the program has to print it.
    pub confirm_within: Duration,
    /// Sync attempts.
    pub sync_tries: u32,
    /// The firmware to write back if this one does not confirm.
    pub fallback: Option<&'a Image>,
}

/// A failure at a stage.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    stage: Stage,
    reason: String,
}

fn at(stage: Stage) -> impl Fn(Stk500Error) -> Failure {
    move |e| Failure {
        stage,
        reason: e.to_string(),
    }
}

/// Checks what needs no device: the board speaks STK500v1 and the image fits.
pub fn check(board: &Board, image: &Image) -> Result<(), Outcome> {
    if board.protocol != Protocol::Stk500v1 {
        return Err(Outcome::Failed {
            stage: Stage::Connecting,
            reason: format!(
                "board `{}` has no native protocol here: give its firmware a tool template (avrdude, esptool)",
                board.name
            ),
        });
    }
    image.fits(board.flash_bytes).map_err(|e| Outcome::Failed {
        stage: Stage::Connecting,
        reason: e.to_string(),
    })
}

/// Flashes over `link` (open, the board just reset by opening it).
pub fn flash(link: &mut dyn Link, plan: &Plan<'_>, progress: &mut dyn Progress) -> Outcome {
    if let Err(o) = check(plan.board, plan.image) {
        return o;
    }
    let written = match write(link, plan, plan.image, progress) {
        Ok(()) => true,
        Err(f) => {
            return Outcome::Failed {
                stage: f.stage,
                reason: f.reason,
            }
        }
    };
    debug_assert!(written);
    let Some(health) = plan.health else {
        progress.report(Stage::Confirming, 100);
        return Outcome::Done { health: None };
    };
    progress.report(Stage::Confirming, 95);
    match confirm(link, health, plan.confirm_within) {
        Ok(line) => {
            progress.report(Stage::Confirming, 100);
            Outcome::Done { health: Some(line) }
        }
        Err(why) => {
            let Some(previous) = plan.fallback else {
                return Outcome::Failed {
                    stage: Stage::Confirming,
                    reason: format!("{why}; no confirmed firmware to roll back to"),
                };
            };
            let _ = link.reset();
            let back = write(link, plan, previous, &mut |_: Stage, _: u8| {})
                .map_err(|f| format!("{}: {}", f.stage, f.reason))
                .and_then(|()| confirm(link, health, plan.confirm_within));
            match back {
                Ok(_) => Outcome::RolledBack { reason: why },
                Err(e) => Outcome::Failed {
                    stage: Stage::Confirming,
                    reason: format!("{why}; rolling back failed too: {e}"),
                },
            }
        }
    }
}

/// Sync, identify, write, verify, leave: the bootloader then starts the program.
fn write(
    link: &mut dyn Link,
    plan: &Plan<'_>,
    image: &Image,
    progress: &mut dyn Progress,
) -> Result<(), Failure> {
    let mut b = Bootloader::new(link);
    progress.report(Stage::Syncing, 0);
    b.sync(plan.sync_tries).map_err(at(Stage::Syncing))?;
    b.enter().map_err(at(Stage::Syncing))?;
    progress.report(Stage::Identifying, 2);
    let signature = b.signature().map_err(at(Stage::Identifying))?;
    if signature != plan.board.signature {
        return Err(Failure {
            stage: Stage::Identifying,
            reason: format!(
                "wrong signature: the device answers {}, board `{}` is {}",
                show_signature(&signature),
                plan.board.name,
                show_signature(&plan.board.signature)
            ),
        });
    }
    let pages = image.pages(plan.board.page_bytes);
    let total = pages.len().max(1) * if plan.verify { 2 } else { 1 };
    let mut done = 0usize;
    let percent = |done: usize| (5 + done * 90 / total) as u8;
    progress.report(Stage::Writing, percent(0));
    for (address, page) in &pages {
        b.write_page(*address, page).map_err(at(Stage::Writing))?;
        done += 1;
        progress.report(Stage::Writing, percent(done));
    }
    if plan.verify {
        progress.report(Stage::Verifying, percent(done));
        for (address, page) in &pages {
            let read = b
                .read_page(*address, page.len())
                .map_err(at(Stage::Verifying))?;
            if let Some(i) = read.iter().zip(page).position(|(r, w)| r != w) {
                return Err(Failure {
                    stage: Stage::Verifying,
                    reason: format!(
                        "verify mismatch at address {:#06x}: wrote {:#04x}, read back {:#04x}",
                        *address as usize + i,
                        page[i],
                        read[i]
                    ),
                });
            }
            done += 1;
            progress.report(Stage::Verifying, percent(done));
        }
    }
    b.leave().map_err(at(Stage::Writing))?;
    Ok(())
}

/// Reads the program's lines until one matches `health`, within `within`.
pub fn confirm(
    link: &mut dyn Link,
    health: &regex::Regex,
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut pending: Vec<u8> = Vec::new();
    let mut last = None;
    let mut buf = [0u8; 256];
    loop {
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            if health.is_match(&line) {
                return Ok(line);
            }
            last = Some(line);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(match last {
                Some(l) => format!(
                    "the firmware did not confirm within {within:?}: no line matched `{health}` (last line: {l:?})"
                ),
                None => format!(
                    "the firmware did not confirm within {within:?}: it printed nothing matching `{health}`"
                ),
            });
        }
        let n = link
            .receive(&mut buf, left.min(Duration::from_millis(200)))
            .map_err(|e| format!("serial port: {e}"))?;
        pending.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::board;
    use crate::stk500::fake::FakeBoard;

    fn image(n: usize, fill: u8) -> Image {
        Image {
            data: vec![fill; n],
        }
    }

    fn plan<'a>(img: &'a Image) -> Plan<'a> {
        Plan {
            board: board("uno").unwrap(),
            image: img,
            verify: true,
            health: None,
            confirm_within: Duration::from_millis(10),
            sync_tries: 2,
            fallback: None,
        }
    }

    #[test]
    fn writes_verifies_and_reports_every_stage() {
        let img = image(300, 0x42);
        let mut fake = FakeBoard::new(32 * 1024);
        let mut seen = Vec::new();
        let out = flash(&mut fake, &plan(&img), &mut |s: Stage, p: u8| {
            seen.push((s, p))
        });
        assert_eq!(out, Outcome::Done { health: None });
        assert_eq!(&fake.flash[..300], img.data.as_slice());
        let stages: Vec<Stage> = seen.iter().map(|(s, _)| *s).collect();
        for s in [
            Stage::Syncing,
            Stage::Identifying,
            Stage::Writing,
            Stage::Verifying,
        ] {
            assert!(stages.contains(&s), "{s} in {stages:?}");
        }
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "{seen:?}");
        assert_eq!(seen.last().unwrap().1, 100);
    }

    #[test]
    fn failures_name_their_stage() {
        let img = image(300, 0x42);
        let mut fake = FakeBoard::new(32 * 1024);
        fake.signature = [0x1e, 0x98, 0x01];
        let out = flash(&mut fake, &plan(&img), &mut |_: Stage, _: u8| {});
        assert!(
            matches!(&out, Outcome::Failed { stage: Stage::Identifying, reason } if reason.contains("1e 98 01")),
            "{out:?}"
        );
        let mut fake = FakeBoard::new(32 * 1024);
        fake.stuck = Some(0x101);
        let out = flash(&mut fake, &plan(&img), &mut |_: Stage, _: u8| {});
        assert!(
            matches!(&out, Outcome::Failed { stage: Stage::Verifying, reason } if reason.contains("0x0101")),
            "{out:?}"
        );
        let big = image(40_000, 1);
        let out = flash(
            &mut FakeBoard::new(64 * 1024),
            &plan(&big),
            &mut |_: Stage, _: u8| {},
        );
        assert!(
            matches!(&out, Outcome::Failed { stage: Stage::Connecting, reason } if reason.contains("32256")),
            "{out:?}"
        );
    }
}
