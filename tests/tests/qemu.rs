//! Real VMs: Agents booted under qemu from the platform image `image/build` bakes, by the
//! local provider's `qemu` mode behind the real `control serve`.
//!
//! The images come from `CONTROL_TEST_IMAGES` (a directory holding the `agent` and `plain`
//! releases, as `.ci/run` builds them); without it, or without qemu, the tests are skipped
//! (and fail under `CONTROL_TEST_STRICT=1`). Each boot takes a minute or more under software
//! emulation, so the steps run one after the other in one test per story.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // the test reads its environment

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{Api, KillVmsOnDrop, Replica, eventually, ledger_holds, processes_under, start_control};
use serde_json::{Value, json};
use test_support::{free_port, have_program, skip, workspace_bin};

/// A boot under software emulation, with room for a loaded machine.
const BOOT: Duration = Duration::from_mins(10);
const WITHIN: Duration = Duration::from_mins(1);

/// The built releases, or `None` (skipped) when they or the tools are missing.
pub fn images() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("CONTROL_TEST_IMAGES").map(PathBuf::from) else {
        skip("CONTROL_TEST_IMAGES is not set (image/build has not run): no VM was booted");
        return None;
    };
    for release in ["agent", "plain"] {
        if !dir.join(release).join("manifest.json").is_file() {
            skip(&format!(
                "no {release} image in {}: no VM was booted",
                dir.display()
            ));
            return None;
        }
    }
    let tools = [
        "qemu-system-x86_64",
        "qemu-img",
        "genisoimage",
        "socat",
        "debugfs",
        "sfdisk",
    ];
    tools.iter().all(|tool| have_program(tool)).then_some(dir)
}

/// One `control serve` whose local provider runs qemu VMs from `images`.
pub struct QemuControl {
    pub dir: tempfile::TempDir,
    pub replica: Option<Replica>,
    pub args: Vec<String>,
    pub port: u16,
    pub op: Api,
}

impl QemuControl {
    pub fn start(images: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("control.toml");
        std::fs::write(
            &config,
            format!(
                "[agents]\nheartbeat_interval_secs = 2\nunhealthy_after_intervals = 30\n\
                 replica_timeout_secs = 5\nstop_grace_secs = 120\n\n\
                 [reconciler]\ninterval_secs = 2\n\n[usage]\nrollup_interval_secs = 2\n\n\
                 [jobs]\npoll_interval_ms = 200\n\n\
                 [local_provider]\nvms = \"qemu\"\nimages_dir = \"{}\"\nmemory_mib = 1024\n\
                 slice_mib = 256\n",
                images.display()
            ),
        )
        .unwrap();
        let args = e2e::control_args(&config, &dir.path().join("data"), None);
        let replica = start_control(&args, port);
        let operator = std::fs::read_to_string(dir.path().join("data/operator-token")).unwrap();
        let op = Api::new(&replica.url, operator.trim());
        Self {
            dir,
            replica: Some(replica),
            args,
            port,
            op,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn vm_dir(&self, agent: &str) -> PathBuf {
        self.data().join("local-vms").join(agent)
    }

    /// Registers the release in `images/agent` from its manifest and makes it current.
    pub fn register(&self, images: &Path) -> Value {
        let output = Command::new(workspace_bin("control"))
            .args(&self.args)
            .args(["image", "register", "--current", "--manifest"])
            .arg(images.join("agent/manifest.json"))
            .args(["--ref", "local=agent"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "control image register: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A new account (operator) and a client with a token of its own.
    pub async fn account(&self, name: &str) -> (String, Api) {
        let account = self.op.account(name).await;
        let token = self
            .op
            .post(&format!("/api/accounts/{account}/tokens"), json!({}))
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = &self.replica.as_ref().unwrap().url;
        (account, Api::new(url, &token))
    }

    /// The latest heartbeat control holds for `agent`, as the agent sent it.
    pub fn heartbeat(&self, agent: &str) -> Option<Value> {
        let output = Command::new("sqlite3")
            .arg(self.data().join("control.db"))
            .arg(format!(
                "SELECT report FROM agent_liveness WHERE agent_id = '{agent}'"
            ))
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).ok()
    }

    pub fn console(&self, agent: &str) -> String {
        std::fs::read_to_string(self.vm_dir(agent).join("console.log")).unwrap_or_default()
    }
}

impl Drop for QemuControl {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(replica) = &self.replica {
                eprintln!("--- control log ---\n{}", replica.daemon.log());
            }
            for agent in std::fs::read_dir(self.data().join("local-vms"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
            {
                let console = self.console(&agent);
                let tail: Vec<&str> = console.lines().rev().take(60).collect();
                eprintln!("--- console of {agent} (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

pub async fn agent(api: &Api, id: &str) -> Value {
    api.get(&format!("/api/agents/{id}")).await
}

/// Waits for `agent` to run with a heartbeat saying cloudflared is ready and the slice is in
/// `slice` state; returns that heartbeat.
pub async fn heartbeating(control: &QemuControl, id: &str, slice: &str) -> Value {
    eventually("a heartbeat from the VM", BOOT, || async {
        control.heartbeat(id).is_some_and(|beat| {
            beat["slice"]["state"] == slice && beat["cloudflared"]["state"] == "ready"
        })
    })
    .await;
    control.heartbeat(id).unwrap()
}

/// A file system image read offline with debugfs (`-R request`).
fn debugfs(image: &Path, request: &str) -> String {
    let output = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How many times the file system in `image` has been mounted.
fn mount_count(image: &Path) -> u64 {
    let output = Command::new("dumpe2fs")
        .args(["-h"])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Mount count:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_vm_boots_from_the_image_reports_and_keeps_its_slice() {
    let Some(images) = images() else { return };
    let control = QemuControl::start(&images);
    let _cleanup = KillVmsOnDrop(control.dir.path().to_owned());
    let op = &control.op;
    let image = control.register(&images);
    let (account, acme) = control.account("Acme").await;

    // Provision: a real VM boots the image and its vm-agent registers and heartbeats, with
    // cloudflared ready and the slice mounted.
    let accepted = acme.post("/api/agents", json!({"name": "vm"})).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    let beat = heartbeating(&control, &id, "mounted").await;
    let view = agent(op, &id).await;
    assert_eq!(view["state"], "running", "{view:#}");
    assert_eq!(view["image"]["image_id"], image["id"], "{view:#}");
    assert_eq!(beat["image_version"], image["version"], "{beat:#}");
    let vm_dir = control.vm_dir(&id);
    let slice = vm_dir.join("slice.raw");

    // Stop: an ACPI shutdown; the Agent is paused and qemu gone.
    acme.post(&format!("/api/agents/{id}/stop"), json!({}))
        .await;
    eventually("the stop", BOOT, || async {
        agent(op, &id).await["state"] == "paused"
    })
    .await;
    assert!(
        processes_under(&vm_dir).is_empty(),
        "no qemu runs for a stopped VM"
    );
    // The image made the workspace on the new slice: coder's (uid 1000), 0700.
    let home = debugfs(&slice, "stat /home-coder");
    assert!(
        home.contains("Mode:  0700") && home.contains("User:  1000"),
        "/home-coder on the slice: {home}"
    );
    // A file placed in the slice (offline, as the volume's contents) survives the stop and
    // start, through a boot that mounts it.
    let marker = control.dir.path().join("marker");
    std::fs::write(&marker, "placed before the restart\n").unwrap();
    let written = Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} /home-coder/marker", marker.display()))
        .arg(&slice)
        .output()
        .unwrap();
    assert!(written.status.success());
    let mounts_before = mount_count(&slice);

    acme.post(&format!("/api/agents/{id}/start"), json!({}))
        .await;
    eventually("the start", BOOT, || async {
        agent(op, &id).await["state"] == "running"
    })
    .await;
    let before = control.heartbeat(&id).unwrap()["boot_id"].clone();
    eventually("a heartbeat from the new boot", BOOT, || async {
        control.heartbeat(&id).is_some_and(|beat| {
            beat["boot_id"] != before
                && beat["slice"]["state"] == "mounted"
                && beat["cloudflared"]["state"] == "ready"
        })
    })
    .await;
    let view = agent(op, &id).await;
    assert_eq!(view["image"]["image_id"], image["id"], "same image pin");
    acme.post(&format!("/api/agents/{id}/stop"), json!({}))
        .await;
    eventually("the second stop", BOOT, || async {
        agent(op, &id).await["state"] == "paused"
    })
    .await;
    assert!(
        mount_count(&slice) > mounts_before,
        "the boot mounted the slice"
    );
    assert_eq!(
        debugfs(&slice, "cat /home-coder/marker"),
        "placed before the restart\n"
    );

    // Clone it while it runs, as on Hetzner: the job shuts it down for a consistent copy
    // (ACPI) and lends its slice disk (read-only, hot-plugged) to the clone's VM once that has
    // booted with its own slice; `vm-agent clone-slice` in the image copies it and vm-agent
    // reports the copy; then the disk goes back and the source is powered on again. The clone's
    // slice equals the source's in every name, mode, owner, link, xattr and byte.
    let edit = |request: &str| {
        let output = Command::new("debugfs")
            .args(["-w", "-R", request])
            .arg(&slice)
            .output()
            .unwrap();
        assert!(output.status.success(), "debugfs -w {request}");
    };
    edit("symlink /home-coder/link marker");
    edit("ea_set /home-coder/marker user.origin qemu-test");
    edit("mkdir /home-coder/sub");
    edit("ln /home-coder/marker /home-coder/sub/hard");
    edit("sif /home-coder/marker links_count 2");
    let source_tree = tree(&slice, "/home-coder");
    assert!(source_tree.len() >= 4, "{source_tree:#?}");
    acme.post(&format!("/api/agents/{id}/start"), json!({}))
        .await;
    let boot_before_clone = heartbeating(&control, &id, "mounted").await["boot_id"].clone();
    eventually("the start done", BOOT, || async {
        let source = agent(op, &id).await;
        source["state"] == "running" && source["operation"].is_null()
    })
    .await;
    let accepted = acme
        .post(
            &format!("/api/agents/{id}/clone"),
            json!({"name": "vm-clone"}),
        )
        .await;
    let clone = accepted["id"].as_str().unwrap().to_owned();
    heartbeating(&control, &clone, "mounted").await;
    eventually("the clone's VM reporting its copy done", BOOT, || async {
        control
            .heartbeat(&clone)
            .is_some_and(|beat| beat["clone"]["state"] == "done")
    })
    .await;
    let report = control.heartbeat(&clone).unwrap()["clone"].clone();
    assert_eq!(report["source_agent"], id.as_str(), "{report:#}");
    assert_eq!(report["files_done"], report["files_total"], "{report:#}");
    assert!(report["files_done"].as_u64().unwrap() >= 4, "{report:#}");
    let view = agent(op, &clone).await;
    assert_eq!(view["image"]["image_id"], image["id"], "{view:#}");
    assert_eq!(view["account_id"], account, "{view:#}");
    // The source is back as it was: running, from a new boot, its slice mounted.
    eventually("the source running again after the copy", BOOT, || async {
        let source = agent(op, &id).await;
        source["state"] == "running"
            && source["operation"].is_null()
            && source["cloning_to"].is_null()
            && control.heartbeat(&id).is_some_and(|beat| {
                beat["boot_id"] != boot_before_clone && beat["slice"]["state"] == "mounted"
            })
    })
    .await;
    for stopped in [&clone, &id] {
        acme.post(&format!("/api/agents/{stopped}/stop"), json!({}))
            .await;
    }
    for stopped in [&clone, &id] {
        eventually("the stops after the clone", BOOT, || async {
            agent(op, stopped).await["state"] == "paused"
        })
        .await;
    }
    let clone_slice = control.vm_dir(&clone).join("slice.raw");
    assert_eq!(tree(&clone_slice, "/home-coder"), source_tree);
    assert_eq!(
        tree(&slice, "/home-coder"),
        source_tree,
        "the source's slice is unchanged"
    );
    ledger_holds(op, &[&id, &clone], "after a clone on qemu").await;

    // Without its slice disk (a volume gone): the heartbeat says so, and nothing of the
    // workspace lands on the root disk.
    std::fs::rename(&slice, control.dir.path().join("slice-away.raw")).unwrap();
    acme.post(&format!("/api/agents/{id}/start"), json!({}))
        .await;
    heartbeating(&control, &id, "missing").await;
    acme.post(&format!("/api/agents/{id}/stop"), json!({}))
        .await;
    eventually("the third stop", BOOT, || async {
        agent(op, &id).await["state"] == "paused"
    })
    .await;
    let raw = control.dir.path().join("root.raw");
    let root = root_file_system(&vm_dir.join("root.qcow2"), &raw);
    let listing = debugfs(&root, "ls -l /data");
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(names.contains(&"."), "debugfs read /data: {listing}");
    let names: Vec<&str> = names
        .into_iter()
        .filter(|n| *n != "." && *n != "..")
        .collect();
    assert!(names.is_empty(), "/data on the root disk holds {names:?}");
    assert!(
        debugfs(&root, "stat /data/home-coder").is_empty(),
        "no /data/home-coder on the root disk"
    );
    std::fs::remove_file(&raw).unwrap();

    // Destroy both: each VM's disks are gone with it.
    for id in [&id, &clone] {
        let (status, body) = acme
            .call(reqwest::Method::DELETE, &format!("/api/agents/{id}"), None)
            .await;
        assert!((200..300).contains(&status), "{status} {body:#}");
        eventually("the destroy", WITHIN, || async {
            agent(op, id).await["state"] == "destroyed"
        })
        .await;
    }
    let left: Vec<PathBuf> = walk(&control.data().join("local-vms"))
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "raw" || e == "qcow2" || e == "iso")
        })
        .collect();
    assert!(left.is_empty(), "disks left behind: {left:?}");
}

/// A directory tree on an ext4 image, read offline: for each entry below `dir`, its path, mode,
/// owner, group, size, link count, content's digest (files), target (symlinks) and extended
/// attributes. A probe file vm-agent left in the slice (a VM that lost power mid-probe) is
/// not the workspace's and is left out.
fn tree(image: &Path, dir: &str) -> Vec<String> {
    let mut entries = Vec::new();
    for line in debugfs(image, &format!("ls -p {dir}")).lines() {
        // /inode/mode/uid/gid/name/size/
        let fields: Vec<&str> = line.split('/').collect();
        let [_, _, mode, uid, gid, name, size, ..] = fields[..] else {
            continue;
        };
        if name == "." || name == ".." || name.starts_with(".vm-agent-probe-") {
            continue;
        }
        let path = format!("{dir}/{name}");
        let stat = debugfs(image, &format!("stat {path}"));
        let links = stat
            .split_whitespace()
            .skip_while(|w| *w != "Links:")
            .nth(1)
            .unwrap_or("?")
            .to_owned();
        let what = if mode.starts_with("04") {
            entries.extend(tree(image, &path));
            String::new()
        } else if mode.starts_with("012") {
            stat.lines()
                .find(|l| l.contains("link"))
                .unwrap_or_default()
                .to_owned()
        } else {
            use sha2::Digest;
            let output = Command::new("debugfs")
                .args(["-R", &format!("cat {path}")])
                .arg(image)
                .output()
                .unwrap();
            hex(&sha2::Sha256::digest(&output.stdout))
        };
        let xattrs = debugfs(image, &format!("ea_list {path}"));
        entries.push(format!(
            "{path} {mode} {uid}:{gid} {size} links={links} {what} [{}]",
            xattrs.trim()
        ));
    }
    entries.sort();
    entries
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, b| {
        use std::fmt::Write;
        let _ = write!(text, "{b:02x}");
        text
    })
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Logs into a VM over SSH with `key` on a loopback port, on a terminal (the password change
/// the one-time password forces needs one), answering the prompts: the one-time password as
/// the current one, then `new_password` twice. Returns the whole transcript.
fn ssh_first_login(key: &Path, port: u16, one_time: &str, new_password: &str) -> String {
    const SCRIPT: &str = r#"
import os, pty, select, sys, time
key, port, current, new = sys.argv[1:5]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("ssh", ["ssh", "-tt", "-i", key, "-p", port, "-o", "BatchMode=no",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PasswordAuthentication=no", "-o", "ConnectTimeout=20", "root@127.0.0.1",
        "echo LOGGED-IN-AS=$(id -un)"])
seen, answered, deadline = b"", [], time.time() + 120
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 1)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    lower = seen.lower()
    for prompt, answer in ((b"current password:", current), (b"new password:", new),
                           (b"retype new password:", new)):
        count = lower.count(prompt) - (prompt == b"new password:") * lower.count(b"retype new password:")
        done = sum(1 for a in answered if a == prompt)
        if count > done:
            answered.append(prompt)
            os.write(fd, answer.encode() + b"\n")
sys.stdout.write(seen.decode(errors="replace"))
"#;
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(key)
        .arg(port.to_string())
        .args([one_time, new_password])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `command` on the VM over SSH with `key` (after the first login's password change).
fn ssh(key: &Path, port: u16, command: &str) -> std::process::Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
        ])
        .arg("root@127.0.0.1")
        .arg(command)
        .output()
        .unwrap()
}

/// A VM's root disk converted to a raw disk at `raw`, and its root file system (the GPT
/// partition named `root` that image/build writes) as debugfs opens it: the raw disk's path
/// with the partition's byte offset.
fn root_file_system(qcow2: &Path, raw: &Path) -> PathBuf {
    let converted = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow2)
        .arg(raw)
        .status()
        .unwrap();
    assert!(converted.success(), "qemu-img convert {}", qcow2.display());
    let output = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .unwrap();
    assert!(output.status.success(), "sfdisk --json {}", raw.display());
    let table: Value = serde_json::from_slice(&output.stdout).unwrap();
    let table = &table["partitiontable"];
    assert_eq!(table["label"], "gpt", "{table}");
    let root = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap_or_else(|| panic!("no partition named root: {table}"));
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let offset = root["start"].as_u64().unwrap() * sector;
    PathBuf::from(format!("{}?offset={offset}", raw.display()))
}

/// A file's presence on a disk image read offline: debugfs prints an inode for it.
fn on_disk(image: &Path, path: &str) -> bool {
    debugfs(image, &format!("stat {path}")).contains("Inode:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_vm_document_rendered_by_control_boots_the_plain_image() {
    let Some(images) = images() else { return };
    let control = QemuControl::start(&images);
    let _cleanup = KillVmsOnDrop(control.dir.path().to_owned());
    let (_, acme) = control.account("Acme").await;
    let key = control.dir.path().join("alice-key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let vault_key = acme
        .post(
            "/api/vault/keys",
            json!({"name": "alice", "public_key": public.trim()}),
        )
        .await;

    // Control renders the document (on the local provider, which keeps it as its seed).
    let vm = acme
        .post(
            "/api/plain-vms",
            json!({"name": "web", "hostname": "web-1.example.test",
                   "vault_key_ids": [vault_key["id"]], "one_time_password": true}),
        )
        .await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let one_time = vm["one_time_password"].as_str().unwrap().to_owned();
    eventually("the Plain VM provisioned", WITHIN, || async {
        acme.get(&format!("/api/plain-vms/{id}")).await["state"] == "running"
    })
    .await;
    let user_data = control.vm_dir(&id).join("user-data");
    assert!(user_data.is_file());

    // That document boots the plain image under qemu, SSH forwarded on loopback for this
    // test only.
    let boot = control.dir.path().join("plain-boot");
    std::fs::create_dir(&boot).unwrap();
    std::fs::copy(&user_data, boot.join("user-data")).unwrap();
    std::fs::write(boot.join("meta-data"), format!("instance-id: {id}\n")).unwrap();
    let seed = Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(boot.join("seed.iso"))
        .arg(boot.join("user-data"))
        .arg(boot.join("meta-data"))
        .status()
        .unwrap();
    assert!(seed.success());
    let plain = images.join("plain");
    let overlay = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(plain.join("disk.raw"))
        .arg(boot.join("root.qcow2"))
        .status()
        .unwrap();
    assert!(overlay.success());
    let port = free_port();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1"])
        .arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=none,id=root",
            boot.join("root.qcow2").display()
        ))
        .args(["-device", "virtio-blk-pci,drive=root,bootindex=0"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on,media=cdrom",
            boot.join("seed.iso").display()
        ))
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
        ))
        .args([
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-rng-pci",
        ])
        .arg("-serial")
        .arg(format!("file:{}", boot.join("console.log").display()));
    let machine = test_support::Daemon::spawn(qemu, port);

    // First login with the Vault key: the one-time password is expired, so the login asks
    // for it as the current password and for a new one.
    let mut transcript = String::new();
    eventually("an SSH login", BOOT, || {
        transcript = ssh_first_login(&key, port, &one_time, "a-new-Passphrase-42!");
        let done = transcript.contains("LOGGED-IN-AS") || transcript.contains("passwd:");
        async move { done }
    })
    .await;
    assert!(
        transcript.contains("You are required to change your password immediately"),
        "the one-time password is expired at first login: {transcript}"
    );
    // The one-time password was the current one: the change went through and the session
    // went on to run the command (a wrong one ends it with "Authentication token manipulation
    // error" and nothing run).
    let after_change = transcript
        .split("Retype new password:")
        .nth(1)
        .unwrap_or_default();
    assert!(
        after_change.contains("LOGGED-IN-AS=root") && !transcript.contains("manipulation error"),
        "the one-time password was the current one: {transcript}"
    );
    let answer = ssh(
        &key,
        port,
        "hostname; id -un; systemctl is-active ssh; chage -l root | head -1",
    );
    let stdout = String::from_utf8_lossy(&answer.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["web-1", "root", "active"], "{answer:?}");
    assert!(
        !lines[3].contains("must be changed"),
        "the new password replaced the expired one: {stdout}"
    );
    // GRUB as its owner's upgrades run it, unattended: grub-pc's maintainer script reinstalls
    // GRUB onto the disk the VM boots from (the image was built on a loop device) and
    // regenerates its menu, without stopping to ask.
    let reconfigured = ssh(
        &key,
        port,
        "DEBIAN_FRONTEND=noninteractive dpkg-reconfigure grub-pc 2>&1; echo exit=$?",
    );
    let said = String::from_utf8_lossy(&reconfigured.stdout);
    assert!(
        said.contains("grub-install success for /dev/vda")
            && said.contains("Found linux image")
            && said.contains("exit=0"),
        "grub-pc reconfigured unattended: {said}"
    );
    // Powered off from inside; qemu ends with the VM.
    let _ = ssh(&key, port, "systemctl poweroff");
    let (status, log) = machine.wait_exit(Duration::from_mins(3));
    assert!(status.success(), "qemu: {log}");

    // Neither vm-agent nor cloudflared is on its disk.
    let root = root_file_system(&boot.join("root.qcow2"), &boot.join("root.raw"));
    assert!(on_disk(&root, "/etc/hostname"), "debugfs reads the disk");
    for path in [
        "/usr/local/bin/vm-agent",
        "/usr/bin/cloudflared",
        "/etc/systemd/system/vm-agent.service",
        "/etc/vm-agent",
    ] {
        assert!(!on_disk(&root, path), "{path} is on the plain image's disk");
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(plain.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["vm_agent"], Value::Null);
    assert_eq!(manifest["cloudflared"], Value::Null);
}
