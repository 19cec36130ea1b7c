//! Copies a directory tree with everything a workspace's files carry: file types (symlinks are
//! never followed), owners, modes with their setuid, setgid and sticky bits, access and
//! modification times, hard links and extended attributes (ACLs and capabilities included).
//!
//! Contents are streamed in chunks, never read whole into memory. Sockets cannot be copied (a
//! socket is only meaningful to the process that listens on it) and are skipped and logged.
//! Source files are opened with `O_NOATIME` where allowed, so copying does not touch the
//! source's access times. It only ever creates entries below the destination root.

use std::collections::HashMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::Level;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};

use crate::event;

/// How much of a file is copied between two progress reports.
const CHUNK: u64 = 8 * 1024 * 1024;

/// Entries (files, directories, links, fifos, devices) and bytes of file contents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

/// A failed step of the copy, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}: {source}", path.display())]
pub struct CopyError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at<'a, E: Into<std::io::Error>>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> CopyError + 'a {
    move |e| CopyError {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// The children of `dir`, by name, so a copy (and a rerun of it) goes in the same order.
fn children(dir: &Path) -> Result<Vec<PathBuf>, CopyError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(at("read the directory", dir))? {
        names.push(entry.map_err(at("read the directory", dir))?.file_name());
    }
    names.sort();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

fn lstat(path: &Path) -> Result<Metadata, CopyError> {
    std::fs::symlink_metadata(path).map_err(at("stat", path))
}

/// Whether `path` (in the slice's top directory) is a probe file vm-agent left there.
fn left_probe(path: &Path, meta: &Metadata) -> bool {
    meta.is_file() && path.file_name().is_some_and(crate::slice::is_probe)
}

/// What below `root` will be copied: every entry but sockets (and a probe file vm-agent left
/// in the top directory), and the bytes of each regular
/// file's contents once per inode (a hard link's other names copy no bytes).
pub fn count(root: &Path) -> Result<Totals, CopyError> {
    let mut totals = Totals::default();
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for path in children(&dir)? {
            let meta = lstat(&path)?;
            let kind = meta.file_type();
            if kind.is_socket() || (dir == root && left_probe(&path, &meta)) {
                continue;
            }
            totals.files += 1;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                totals.bytes += meta.len();
            }
        }
    }
    Ok(totals)
}

/// One copy of a tree, reporting its running totals to `tick` after each entry and chunk.
pub struct Copier<'a> {
    /// The first copy of each multiply-linked source inode: its later names are linked to it.
    links: HashMap<(u64, u64), PathBuf>,
    done: Totals,
    tick: &'a mut dyn FnMut(Totals),
}

impl<'a> Copier<'a> {
    pub fn new(tick: &'a mut dyn FnMut(Totals)) -> Self {
        Self {
            links: HashMap::new(),
            done: Totals::default(),
            tick,
        }
    }

    /// Copies the directory `from` to `to`, which must not exist; returns what was copied.
    pub fn copy_tree(mut self, from: &Path, to: &Path) -> Result<Totals, CopyError> {
        let meta = lstat(from)?;
        self.directory(from, to, &meta, true)?;
        Ok(self.done)
    }

    /// Copies the directory `from` to `to`; in the `top` one, without the probe file the
    /// source's vm-agent may have left there (a shutdown mid-probe): not the workspace's.
    fn directory(
        &mut self,
        from: &Path,
        to: &Path,
        meta: &Metadata,
        top: bool,
    ) -> Result<(), CopyError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(to)
            .map_err(at("create the directory", to))?;
        for child in children(from)? {
            if top && left_probe(&child, &lstat(&child)?) {
                continue;
            }
            let name = child.file_name().unwrap_or_default();
            self.entry(&child, &to.join(name))?;
        }
        // After the contents, whose creation changed its times.
        keep_attributes(from, to, meta)
    }

    fn entry(&mut self, from: &Path, to: &Path) -> Result<(), CopyError> {
        let meta = lstat(from)?;
        let kind = meta.file_type();
        if kind.is_socket() {
            event!(
                Level::Info,
                "clone",
                "skipped the socket {}: a socket cannot be copied (its program makes it anew)",
                from.display()
            );
            return Ok(());
        }
        if !kind.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                std::fs::hard_link(first, to).map_err(at("hard-link", to))?;
                self.file_done();
                return Ok(());
            }
            self.links.insert(key, to.to_owned());
        }
        if kind.is_dir() {
            self.directory(from, to, &meta, false)?;
        } else if kind.is_file() {
            self.file(from, to)?;
            keep_attributes(from, to, &meta)?;
        } else {
            special(from, to, &meta)?;
            keep_attributes(from, to, &meta)?;
        }
        self.file_done();
        Ok(())
    }

    fn file_done(&mut self) {
        self.done.files += 1;
        (self.tick)(self.done);
    }

    fn file(&mut self, from: &Path, to: &Path) -> Result<(), CopyError> {
        let source = open_quietly(from).map_err(at("open", from))?;
        let target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(at("create", to))?;
        loop {
            // std copies File to File in the kernel (copy_file_range) where it can.
            let copied = std::io::copy(&mut (&source).take(CHUNK), &mut &target)
                .map_err(at("copy the contents of", from))?;
            if copied == 0 {
                return Ok(());
            }
            self.done.bytes += copied;
            (self.tick)(self.done);
        }
    }
}

/// Opens `path` for reading without updating its access time where the kernel allows it.
fn open_quietly(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOATIME.bits())
        .open(path)
        .or_else(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) {
                File::open(path)
            } else {
                Err(e)
            }
        })
}

/// Makes a symlink, fifo or device node like `from` at `to`.
fn special(from: &Path, to: &Path, meta: &Metadata) -> Result<(), CopyError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(from).map_err(at("read the link", from))?;
        std::os::unix::fs::symlink(target, to).map_err(at("create the link", to))
    } else if kind.is_fifo() {
        mkfifo(to, Mode::S_IRUSR | Mode::S_IWUSR).map_err(at("create the fifo", to))
    } else {
        let flag = if kind.is_block_device() {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        mknod(to, flag, Mode::S_IRUSR | Mode::S_IWUSR, meta.rdev())
            .map_err(at("create the device node", to))
    }
}

/// Gives `to` the owner, mode, extended attributes and times of `from`, in that order: a
/// change of owner clears setuid, setgid and file capabilities, and every change but the
/// last touches the times.
fn keep_attributes(from: &Path, to: &Path, meta: &Metadata) -> Result<(), CopyError> {
    fchownat(
        AT_FDCWD,
        to,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(at("set the owner of", to))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(at("set the mode of", to))?;
    }
    copy_xattrs(from, to)?;
    utimensat(
        AT_FDCWD,
        to,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(at("set the times of", to))
}

/// Copies every extended attribute of `from` to `to`, neither followed if a symlink.
fn copy_xattrs(from: &Path, to: &Path) -> Result<(), CopyError> {
    for name in xattr_names(from).map_err(at("list the extended attributes of", from))? {
        let value =
            xattr_value(from, &name).map_err(at("read the extended attributes of", from))?;
        rustix::fs::lsetxattr(to, name.as_slice(), &value, rustix::fs::XattrFlags::empty())
            .map_err(at("set an extended attribute on", to))?;
    }
    Ok(())
}

/// The names of `path`'s extended attributes; none where the file system has none.
fn xattr_names(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(size) => size,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut list = vec![0_u8; size];
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(len) => {
                list.truncate(len);
                return Ok(list
                    .split(|b| *b == 0)
                    .filter(|name| !name.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            // The list grew between the two calls: ask again.
            Err(rustix::io::Errno::RANGE) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn xattr_value(path: &Path, name: &[u8]) -> std::io::Result<Vec<u8>> {
    loop {
        let size = rustix::fs::lgetxattr_query(path, name)?;
        let mut value = vec![0_u8; size];
        if size == 0 {
            return Ok(value);
        }
        match rustix::fs::lgetxattr(path, name, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                return Ok(value);
            }
            Err(rustix::io::Errno::RANGE) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_file_left_in_the_top_directory_is_not_the_workspaces() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        for name in [
            ".vm-agent-probe-269",
            ".vm-agent-probe-x",
            "sub/.vm-agent-probe-7",
            "kept",
        ] {
            std::fs::write(from.join(name), "probe").unwrap();
        }
        let totals = count(&from).unwrap();
        assert_eq!(totals.files, 4, "sub, its file, the non-probe and kept");
        let to = dir.path().join("to");
        let mut tick = |_| {};
        let done = Copier::new(&mut tick).copy_tree(&from, &to).unwrap();
        assert_eq!(done, totals);
        assert!(!to.join(".vm-agent-probe-269").exists());
        for kept in [".vm-agent-probe-x", "sub/.vm-agent-probe-7", "kept"] {
            assert!(to.join(kept).exists(), "{kept}");
        }
    }
}
