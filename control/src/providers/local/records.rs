//! Where the local provider keeps what a cloud keeps for it (firewalls, volumes, tunnels):
//! records by id, in this process's memory or as one JSON file each in a directory every
//! replica shares. A change holds the directory's lock from read to write, so two replicas
//! creating the same name at once make one record and one `Conflict`.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::vm::{lock_vm as lock_dir, transient};
use crate::providers::ProviderError;
use crate::sync;

#[derive(Debug)]
pub(super) enum Records<T> {
    Memory(Mutex<BTreeMap<String, T>>),
    Dir(PathBuf),
}

/// A record's file name: ids are ours, but they name a file, so they are checked.
fn file_name(id: &str) -> Option<String> {
    let plain = !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then(|| format!("{id}.json"))
}

impl<T: Clone + Serialize + DeserializeOwned> Records<T> {
    pub(super) fn memory() -> Self {
        Self::Memory(Mutex::new(BTreeMap::new()))
    }

    pub(super) fn dir(path: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        Ok(Self::Dir(path.to_owned()))
    }

    pub(super) fn get(&self, id: &str) -> Result<Option<T>, ProviderError> {
        match self {
            Self::Memory(records) => Ok(sync::lock(records).get(id).cloned()),
            Self::Dir(dir) => {
                let Some(name) = file_name(id) else {
                    return Ok(None);
                };
                read(&dir.join(name))
            }
        }
    }

    /// Every record, by id.
    pub(super) fn all(&self) -> Result<BTreeMap<String, T>, ProviderError> {
        match self {
            Self::Memory(records) => Ok(sync::lock(records).clone()),
            Self::Dir(dir) => {
                let mut all = BTreeMap::new();
                let entries = std::fs::read_dir(dir).map_err(|e| transient("reading", dir, e))?;
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(id) = name.strip_suffix(".json") else {
                        continue;
                    };
                    if file_name(id).is_some()
                        && let Some(record) = read(&entry.path())?
                    {
                        all.insert(id.to_owned(), record);
                    }
                }
                Ok(all)
            }
        }
    }

    /// Runs `change` on every record under the lock, and writes back the record it returns
    /// for an id (`Some` to write, `None` to delete). What `change` returns besides is passed
    /// through.
    pub(super) async fn change<R>(
        &self,
        change: impl FnOnce(&BTreeMap<String, T>) -> Result<(Write<T>, R), ProviderError>,
    ) -> Result<R, ProviderError> {
        match self {
            Self::Memory(records) => {
                let mut records = sync::lock(records);
                let (write, out) = change(&records)?;
                match write {
                    Write::Put(id, record) => {
                        records.insert(id, record);
                    }
                    Write::Delete(id) => {
                        records.remove(&id);
                    }
                    Write::Nothing => {}
                }
                Ok(out)
            }
            Self::Dir(dir) => {
                let _held = lock_dir(dir).await?;
                let (write, out) = change(&self.all()?)?;
                match write {
                    Write::Put(id, record) => put(dir, &id, &record)?,
                    Write::Delete(id) => {
                        if let Some(name) = file_name(&id) {
                            let path = dir.join(name);
                            match std::fs::remove_file(&path) {
                                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                    return Err(transient("deleting", &path, e));
                                }
                                _ => {}
                            }
                        }
                    }
                    Write::Nothing => {}
                }
                Ok(out)
            }
        }
    }
}

impl<T: Clone + Serialize + DeserializeOwned> Records<T> {
    /// Edits record `id` under the lock; `edit` says whether it changed anything, and
    /// `missing` is the error when there is no such record.
    pub(super) async fn update(
        &self,
        id: &str,
        missing: impl FnOnce() -> ProviderError,
        edit: impl FnOnce(&mut T) -> bool,
    ) -> Result<(), ProviderError> {
        self.change(|all| {
            let mut record = all.get(id).cloned().ok_or_else(missing)?;
            let write = if edit(&mut record) {
                Write::Put(id.to_owned(), record)
            } else {
                Write::Nothing
            };
            Ok((write, ()))
        })
        .await
    }
}

/// What a [`Records::change`] writes.
pub(super) enum Write<T> {
    Put(String, T),
    Delete(String),
    Nothing,
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ProviderError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| transient("parsing", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(transient("reading", path, e)),
    }
}

/// Writes a record atomically (temp file, then rename), readable by its owner only: tunnel
/// records hold tokens.
fn put<T: Serialize>(dir: &Path, id: &str, record: &T) -> Result<(), ProviderError> {
    let name = file_name(id).ok_or_else(|| {
        ProviderError::permanent(format!("not a record id: {}", id.escape_debug()))
    })?;
    let path = dir.join(&name);
    let temp = dir.join(format!(".{name}.tmp"));
    let text = serde_json::to_string_pretty(record).map_err(|e| transient("encoding", &path, e))?;
    super::vm::write_secret(&temp, &text)?;
    std::fs::rename(&temp, &path).map_err(|e| transient("writing", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(records: &Records<String>) {
        records
            .change(|_| Ok((Write::Put("fw-1".to_owned(), "one".to_owned()), ())))
            .await
            .unwrap();
        assert_eq!(records.get("fw-1").unwrap().as_deref(), Some("one"));
        assert_eq!(records.get("../fw-1").unwrap(), None);
        assert_eq!(records.all().unwrap().len(), 1);
        let seen = records
            .change(|all| Ok((Write::Delete("fw-1".to_owned()), all.len())))
            .await
            .unwrap();
        assert_eq!(seen, 1);
        assert_eq!(records.get("fw-1").unwrap(), None);
        // Deleting what is gone is fine; the caller decides whether that is `NotFound`.
        records
            .change(|_| Ok((Write::Delete("fw-1".to_owned()), ())))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn records_round_trip_in_memory_and_on_disk() {
        exercise(&Records::memory()).await;
        let dir = tempfile::tempdir().unwrap();
        let on_disk = Records::dir(&dir.path().join("firewalls")).unwrap();
        exercise(&on_disk).await;
        on_disk
            .change(|_| Ok((Write::Put("fw-2".to_owned(), "two".to_owned()), ())))
            .await
            .unwrap();
        // Another replica opening the same directory sees it.
        let other: Records<String> = Records::dir(&dir.path().join("firewalls")).unwrap();
        assert_eq!(other.get("fw-2").unwrap().as_deref(), Some("two"));
    }
}
