//! The clone's progress file, `<volume>/.vm-agent-clone.json`: written by `clone-slice` as the
//! copy goes, read by `vm-agent run` for its heartbeats.
//!
//! It lives on the slice's own volume, beside the slice, so it survives reboots with the copy
//! it describes (a `done` there means the slice holds the copy) and is never on the root disk.
//! It is replaced atomically (temp file, fsync, rename, fsync of the directory): a reader sees
//! the old record or the new one, never half of one, even after a crash.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use control_api::Timestamp;
use control_api::agent::{CloneReport, CloneState};
use log::Level;
use serde::{Deserialize, Serialize};

use crate::config::{CloneFrom, Slice};
use crate::{event, slice};

/// The progress file's name, at the root of the slice's volume.
pub const FILE_NAME: &str = ".vm-agent-clone.json";

/// The most an error message may take in the record and the heartbeat.
pub const ERROR_MAX_BYTES: usize = 512;

/// What the progress file holds: the heartbeat's report plus what a support engineer (and a
/// rerun) needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub report: CloneReport,
    /// Where the copy is read from (`device /dev/...` or `directory /...`).
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// The copy is complete (and synced) in the staging directory and is being moved into the
    /// slice: a rerun finishes the move instead of copying again.
    #[serde(default)]
    pub staged: bool,
}

impl Record {
    /// A clone that has not started: waiting, nothing counted.
    pub fn waiting(source_agent: &str) -> Self {
        Self {
            report: waiting(source_agent),
            from: String::new(),
            started_at: None,
            finished_at: None,
            staged: false,
        }
    }
}

fn waiting(source_agent: &str) -> CloneReport {
    CloneReport {
        source_agent: source_agent.to_owned(),
        state: CloneState::Waiting,
        files_done: 0,
        files_total: None,
        bytes_done: 0,
        bytes_total: None,
        error: None,
    }
}

/// `message` cut to at most [`ERROR_MAX_BYTES`], on a character boundary.
pub fn clip(message: &str) -> String {
    if message.len() <= ERROR_MAX_BYTES {
        return message.to_owned();
    }
    let mut end = ERROR_MAX_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Why the progress file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a clone progress record: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The record at `path`; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Record>, ReadError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReadError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| ReadError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Replaces the record at `path` atomically and durably.
pub fn write(path: &Path, record: &Record) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let temp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temp)?;
    let mut text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// What `vm-agent run` reports in a heartbeat: the record's figures, or `waiting` with zeros
/// while there is no readable record for this source (the volume not mounted yet, no file
/// yet, or one left by another clone). A corrupt file is logged at WARN once (`warned`).
pub fn report(slice: &Slice, clone: &CloneFrom, warned: &mut bool) -> CloneReport {
    let Ok(volume) = slice::volume_mount_point(slice) else {
        return waiting(&clone.source_agent);
    };
    match read(&volume.join(FILE_NAME)) {
        Ok(Some(record)) if record.report.source_agent == clone.source_agent => record.report,
        Ok(_) => waiting(&clone.source_agent),
        Err(error) => {
            if !std::mem::replace(warned, true) {
                event!(
                    Level::Warn,
                    "clone",
                    "{error}; reporting the clone as waiting until it can be read"
                );
            }
            waiting(&clone.source_agent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written_and_carries_the_report_flat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(read(&path).unwrap(), None);
        let mut record = Record::waiting("agt_src");
        record.report.state = CloneState::Copying;
        record.report.files_total = Some(10);
        record.report.bytes_done = 7;
        record.started_at = Some(Timestamp::from_millis(1_700_000_000_000));
        write(&path, &record).unwrap();
        assert_eq!(read(&path).unwrap(), Some(record));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["state"], "copying");
        assert_eq!(json["files_total"], 10);
        assert!(!dir.path().join(".vm-agent-clone.json.tmp").exists());

        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(read(&path), Err(ReadError::Corrupt { .. })));
    }

    #[test]
    fn errors_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(400);
        let clipped = clip(&long);
        assert!(clipped.len() <= ERROR_MAX_BYTES, "{}", clipped.len());
        assert!(clipped.ends_with('…'));
    }
}
