//! The local provider copies an Agent's slice for a clone: the source VM's
//! `data/home-coder` is copied, while that VM is off, into a *seed* under `<dir>/.slice-seeds/`
//! (a dot name: never taken for a VM), and the clone's VM takes the seed as its slice when it
//! is created, before its vm-agent first runs. In memory, a seed is a record of which VM it
//! came from, and the clone's VM remembers it.
//!
//! The copy is GNU `cp` with `--no-dereference --recursive --preserve=mode,ownership,
//! timestamps,links,xattr`: symlinks are copied as symlinks and never followed (so nothing
//! outside the tree is read), hard links inside the tree stay one inode, and a failure to keep
//! an extended attribute is an error rather than a silent loss (which `--preserve=all` would
//! allow). It already handles sparse files, FIFOs and device nodes, directory times set after
//! their contents and hard-link groups across the tree. (A cloud's clone made on the VM uses
//! `vm-agent clone-slice`'s own walk instead, which reports its progress as it goes.)
//!
//! A copy is made into `<to>.partial` and renamed to `<to>` when complete, so a copy killed
//! halfway is thrown away and made again, never completed on top of itself. It must never
//! copy a running VM's slice (refused: the copy would not be consistent) nor touch a VM
//! that exists already.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::vm::{read_vm, transient};
use super::{Backing, LocalProvider};
use crate::providers::{ProviderError, Slices};
use crate::sync;

/// Where seeds are kept, beside the VMs.
const SEEDS: &str = ".slice-seeds";

/// A VM's slice, inside its directory.
pub(super) const SLICE: &str = "data/home-coder";

#[async_trait]
impl Slices for LocalProvider {
    async fn seed_slice(&self, from_server: &str, to: &str) -> Result<(), ProviderError> {
        match &self.backing {
            Backing::Memory(vms) => {
                {
                    let vms = sync::lock(vms);
                    let from = vms
                        .get(from_server)
                        .ok_or_else(|| ProviderError::not_found(format!("VM {from_server}")))?;
                    if from.running {
                        return Err(running(from_server));
                    }
                    if vms.contains_key(to) {
                        return Ok(());
                    }
                }
                sync::lock(&self.seeds).insert(to.to_owned(), from_server.to_owned());
                Ok(())
            }
            Backing::Processes { dir, .. } => {
                let from_dir = Self::vm_dir(dir, from_server)?;
                let to_dir = Self::vm_dir(dir, to)?;
                let from = read_vm(&from_dir)
                    .map_err(|_| ProviderError::not_found(format!("VM {from_server}")))?;
                if from.running {
                    return Err(running(from_server));
                }
                if read_vm(&to_dir).is_ok() {
                    // Its VM exists: it took the seed when it was created.
                    return Ok(());
                }
                let seeds = seeds(dir)?;
                let origin = seeds.join(format!("{to}.from"));
                std::fs::write(&origin, from_server)
                    .map_err(|e| transient("writing", &origin, e))?;
                // A qemu VM's slice is its disk, copied whole (everything on it kept as is).
                let source = if from.qemu {
                    from_dir.join(super::qemu::SLICE_DISK)
                } else {
                    from_dir.join(SLICE)
                };
                copy_seed(&source, from.qemu, &seeds, to).await
            }
        }
    }

    async fn discard_seed(&self, to: &str) -> Result<(), ProviderError> {
        match &self.backing {
            Backing::Memory(_) => {
                sync::lock(&self.seeds).remove(to);
                Ok(())
            }
            Backing::Processes { dir, .. } => {
                Self::vm_dir(dir, to)?;
                let seeds = seeds(dir)?;
                for path in [seeds.join(to), seeds.join(format!("{to}.partial"))] {
                    remove_tree(&path)?;
                }
                let origin = seeds.join(format!("{to}.from"));
                match std::fs::remove_file(&origin) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(transient("removing", &origin, e));
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }
}

impl LocalProvider {
    /// The VM `id` being created in memory: the VM its seed came from, if it has one.
    pub(super) fn take_seed_record(&self, id: &str) -> Option<String> {
        sync::lock(&self.seeds).remove(id)
    }
}

/// Makes the seed `id` (if there is one) the slice of the VM being created in `vm_dir`, whose
/// slice nothing has used yet (its `vm.json` is not written: no agent ever ran on it). A
/// rename, so a crash leaves either the seed or the slice, never half of each; the seed's note
/// of where it came from is removed then. Returns the VM the seed was copied from.
pub(super) fn adopt_seed(
    dir: &Path,
    id: &str,
    vm_dir: &Path,
) -> Result<Option<String>, ProviderError> {
    adopt_seed_as(dir, id, &vm_dir.join(SLICE))
}

/// [`adopt_seed`], the seed becoming `slice` (a qemu VM's slice disk).
pub(super) fn adopt_seed_as(
    dir: &Path,
    id: &str,
    slice: &Path,
) -> Result<Option<String>, ProviderError> {
    let seeds = seeds(dir)?;
    let seed = seeds.join(id);
    let origin_file = seeds.join(format!("{id}.from"));
    if !seed.exists() {
        // Taken before a crash that left its note of origin behind: the note goes too.
        remove_tree(&origin_file)?;
        return Ok(None);
    }
    let origin =
        std::fs::read_to_string(&origin_file).unwrap_or_else(|_| "an unknown VM".to_owned());
    // The empty slice the layout made (a rename replaces an empty directory only).
    match std::fs::remove_dir(slice) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(transient("replacing the new slice", slice, e));
        }
        _ => {}
    }
    std::fs::rename(&seed, slice).map_err(|e| transient("taking the seed", &seed, e))?;
    remove_tree(&origin_file)?;
    Ok(Some(origin))
}

fn running(id: &str) -> ProviderError {
    ProviderError::conflict(format!(
        "VM {id} is running: its slice is copied only while it is off, so the copy is consistent"
    ))
}

fn seeds(dir: &Path) -> Result<PathBuf, ProviderError> {
    let seeds = dir.join(SEEDS);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&seeds)
        .map_err(|e| transient("creating", &seeds, e))?;
    Ok(seeds)
}

fn remove_tree(path: &Path) -> Result<(), ProviderError> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
        _ => std::fs::remove_dir_all(path),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(transient("removing", path, e)),
        _ => Ok(()),
    }
}

/// Copies the slice `source` to the seed `to` under `seeds`, unless that seed is complete.
async fn copy_seed(source: &Path, disk: bool, seeds: &Path, to: &str) -> Result<(), ProviderError> {
    let seed = seeds.join(to);
    if seed.exists() {
        return Ok(());
    }
    // The slice itself, never what a symlink in its place would point at.
    match std::fs::symlink_metadata(source) {
        Ok(meta) if meta.is_dir() != disk && !meta.is_symlink() => {}
        Ok(_) => {
            return Err(ProviderError::permanent(format!(
                "{} is not a slice's {}: nothing to copy",
                if disk { "disk" } else { "directory" },
                source.display()
            )));
        }
        Err(e) => return Err(transient("reading", source, e)),
    }
    let partial = seeds.join(format!("{to}.partial"));
    remove_tree(&partial)?;
    let output = tokio::process::Command::new("cp")
        .args([
            "--no-dereference",
            "--recursive",
            "--preserve=mode,ownership,timestamps,links,xattr",
            "--no-target-directory",
            "--",
        ])
        .arg(source)
        .arg(&partial)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| transient("running cp for", source, e))?;
    if !output.status.success() {
        return Err(ProviderError::transient(format!(
            "copying {} failed ({}): {}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&partial, &seed).map_err(|e| transient("completing", &seed, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::Duration;

    use super::*;
    use crate::providers::local::LocalVmConfig;

    fn provider(dir: &Path) -> LocalProvider {
        LocalProvider::with_processes(
            dir,
            LocalVmConfig {
                vm_agent: "/nonexistent/vm-agent".into(),
                cloudflared: "/nonexistent/cloudflared".into(),
                control_urls: vec!["http://127.0.0.1:9".to_owned()],
                control_ca_file: None,
                heartbeat_interval: Duration::from_secs(10),
                qemu: None,
            },
        )
        .unwrap()
    }

    /// A VM directory as `create_server` leaves it, off.
    fn off_vm(dir: &Path, id: &str) -> PathBuf {
        let vm_dir = dir.join(id);
        std::fs::create_dir_all(vm_dir.join(SLICE)).unwrap();
        let vm = serde_json::json!({
            "agent_id": id, "name": id, "image_ref": "img", "running": false, "boots": 1,
        });
        std::fs::write(vm_dir.join("vm.json"), vm.to_string()).unwrap();
        vm_dir
    }

    #[tokio::test]
    async fn a_seed_is_a_copy_of_an_off_vms_slice_made_once_and_taken_by_the_new_vm() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("vms");
        let local = provider(&dir);
        let source = off_vm(&dir, "agt_a");
        let slice = source.join(SLICE);
        std::fs::create_dir(slice.join("sub")).unwrap();
        std::fs::write(slice.join("sub/f"), "hello").unwrap();
        std::fs::set_permissions(slice.join("sub/f"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::hard_link(slice.join("sub/f"), slice.join("g")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", slice.join("out")).unwrap();

        local.seed_slice("agt_a", "agt_b").await.unwrap();
        let seed = dir.join(SEEDS).join("agt_b");
        assert_eq!(
            std::fs::read_to_string(seed.join("sub/f")).unwrap(),
            "hello"
        );
        let f = std::fs::metadata(seed.join("sub/f")).unwrap();
        assert_eq!(f.mode() & 0o777, 0o640);
        assert_eq!(f.ino(), std::fs::metadata(seed.join("g")).unwrap().ino());
        // The symlink is a symlink, not a copy of what it points at.
        assert_eq!(
            std::fs::read_link(seed.join("out")).unwrap(),
            Path::new("/etc/passwd")
        );

        // Done again: the complete seed is kept, not copied on top of.
        std::fs::write(seed.join("marker"), "").unwrap();
        local.seed_slice("agt_a", "agt_b").await.unwrap();
        assert!(seed.join("marker").exists());

        // A half-made copy is thrown away and made again.
        local.discard_seed("agt_b").await.unwrap();
        assert!(!seed.exists());
        std::fs::create_dir_all(dir.join(SEEDS).join("agt_b.partial/junk")).unwrap();
        local.seed_slice("agt_a", "agt_b").await.unwrap();
        assert!(!seed.join("junk").exists() && seed.join("g").exists());
        assert!(!dir.join(SEEDS).join("agt_b.partial").exists());

        // The new VM takes it as its slice.
        let clone = dir.join("agt_b");
        std::fs::create_dir_all(clone.join(SLICE)).unwrap();
        assert_eq!(
            adopt_seed(&dir, "agt_b", &clone).unwrap().as_deref(),
            Some("agt_a")
        );
        assert_eq!(
            std::fs::read_to_string(clone.join(SLICE).join("g")).unwrap(),
            "hello"
        );
        assert_eq!(adopt_seed(&dir, "agt_b", &clone).unwrap(), None);
    }

    #[tokio::test]
    async fn a_running_vms_slice_is_not_copied() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("vms");
        let local = provider(&dir);
        let source = off_vm(&dir, "agt_a");
        let text = std::fs::read_to_string(source.join("vm.json")).unwrap();
        std::fs::write(
            source.join("vm.json"),
            text.replace("\"running\":false", "\"running\":true"),
        )
        .unwrap();
        let refused = local.seed_slice("agt_a", "agt_b").await.unwrap_err();
        assert_eq!(refused.kind, crate::providers::ErrorKind::Conflict);
        assert!(!dir.join(SEEDS).join("agt_b").exists());
    }
}
