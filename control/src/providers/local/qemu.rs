//! The local provider's `qemu` mode: each Agent's VM is a real virtual machine booted from a
//! baked platform image (`image/build`) with qemu, instead of a vm-agent process.
//!
//! A VM's directory holds:
//! - `root.qcow2`, its root disk: a copy-on-write overlay of the release's `disk.raw` (the
//!   release's files are never written);
//! - `slice.raw`, its slice: a second disk, ext4 labelled `agent-slice`, which the image
//!   mounts at `/data` (a VM booted without it finds no slice, as one whose volume is gone);
//! - `seed.iso`, its `NoCloud` seed: the very cloud-init document control rendered, as
//!   `user-data`, beside `meta-data` with its instance id, on a volume labelled `cidata`;
//! - `console.log`, its serial console; `qmp.sock`, qemu's control socket.
//!
//! A volume is lent to a running VM as Hetzner attaches one to a running server: another VM's
//! `slice.raw`, hot-plugged on a spare PCI Express port with a serial the guest names it by
//! (`/dev/disk/by-id/virtio-<serial>`), and unplugged once the guest lets go of it. This is how
//! a clone's VM copies its source's slice in this mode, as on Hetzner.
//!
//! The VM boots its root disk through the firmware (`SeaBIOS`) and the disk's GRUB, as a cloud
//! server boots the same image; a release an earlier recipe built (a bare root file system with
//! `vmlinuz` and `initrd.img` beside it) boots its kernel directly. Networking is qemu's
//! user mode with `restrict=on`: the VM reaches nothing but control, through one forward
//! (`guestfwd`) of [`GUEST_CONTROL`] to the replica it reports to; nothing is forwarded into
//! the VM, so it has no inbound port, as on a cloud. A shutdown is ACPI's (`system_powerdown`
//! over QMP), then power-off after a grace period; a VM that powers itself off is off.
//!
//! qemu runs in its own process group, survives control's restarts and is adopted again, as
//! an Agent's vm-agent process is in the default mode (found by its `-name`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::vm::transient;
use crate::providers::{ProviderError, Secret};

/// Where a VM sees control: a forward in its user-mode network to the replica it reports to.
/// In `qemu` mode, Agents' documents must name this URL (`[agents] control_url`).
pub const GUEST_CONTROL: &str = "http://10.0.2.100";
const GUEST_CONTROL_ADDRESS: &str = "10.0.2.100:80";

/// A VM's slice disk, in its directory.
pub(super) const SLICE_DISK: &str = "slice.raw";

/// The PCI Express port a lent volume is plugged into.
const HOTPLUG_PORT: &str = "spare-port";

/// The label the image mounts at `/data`.
pub(super) const SLICE_LABEL: &str = "agent-slice";

/// How `qemu` mode runs VMs.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Built releases: a release's `local` reference names a directory here (or is an absolute
    /// path) holding `disk.raw` and `manifest.json`.
    pub images_dir: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub slice_mib: u32,
    /// `kvm` when it works on the host, else `tcg` (software emulation).
    pub accel: String,
    /// How long a shutdown waits for the guest's OS before powering it off.
    pub shutdown_grace: Duration,
}

/// A built release, as `image/build` lays it out.
#[derive(Clone, Debug)]
pub(super) struct Release {
    pub(super) dir: PathBuf,
    boot: Boot,
}

/// How a release's disk boots.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Boot {
    /// A whole disk with its boot loader (the manifest's `boot.firmware` is `bios`).
    Firmware,
    /// A bare root file system: the kernel and initramfs beside it, booted directly with this
    /// command line (releases of the recipe before the bootable disk).
    Kernel { cmdline: String },
}

impl Release {
    /// The release a VM's image reference names.
    pub(super) fn find(config: &QemuConfig, image_ref: &str) -> Result<Self, ProviderError> {
        let named = Path::new(image_ref);
        let plain_name =
            !image_ref.is_empty() && !image_ref.starts_with('.') && named.components().count() == 1;
        let dir = if named.is_absolute() {
            named.to_owned()
        } else if plain_name {
            config.images_dir.join(named)
        } else {
            return Err(ProviderError::permanent(format!(
                "image {image_ref:?} is neither a release under {} nor an absolute path",
                config.images_dir.display()
            ))
            .with_code("invalid_input"));
        };
        let missing = |file: &str| {
            ProviderError::permanent(format!(
                "image {image_ref:?}: no {file} in {} (build it with image/build)",
                dir.display()
            ))
            .with_code("not_found")
        };
        for file in ["disk.raw", "manifest.json"] {
            if !dir.join(file).is_file() {
                return Err(missing(file));
            }
        }
        let manifest: Value = std::fs::read(dir.join("manifest.json"))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or(Value::Null);
        let boot = if manifest["boot"]["firmware"] == "bios" {
            Boot::Firmware
        } else {
            for file in ["vmlinuz", "initrd.img"] {
                if !dir.join(file).is_file() {
                    return Err(missing(file));
                }
            }
            let cmdline = manifest["boot"]["cmdline"]
                .as_str()
                .unwrap_or("root=LABEL=root ro console=ttyS0");
            Boot::Kernel {
                cmdline: cmdline.to_owned(),
            }
        };
        Ok(Self { dir, boot })
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), ProviderError> {
    let output = command
        .output()
        .map_err(|e| ProviderError::transient(format!("cannot run {what}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(ProviderError::transient(format!(
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// Makes a new VM's disks and seed from the release and the document control rendered.
pub(super) fn prepare(
    vm_dir: &Path,
    id: &str,
    document: &Secret,
    release: &Release,
    config: &QemuConfig,
) -> Result<(), ProviderError> {
    let seed = vm_dir.join("seed");
    std::fs::create_dir_all(&seed).map_err(|e| transient("creating", &seed, e))?;
    super::vm::write_secret(&seed.join("user-data"), &document.0)?;
    super::vm::write_secret(
        &seed.join("meta-data"),
        &format!(
            "instance-id: {id}\nlocal-hostname: {}\n",
            id.replace('_', "-")
        ),
    )?;
    let iso = vm_dir.join("seed.iso");
    run(
        Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&iso)
            .arg(seed.join("user-data"))
            .arg(seed.join("meta-data")),
        "genisoimage (the NoCloud seed)",
    )?;
    set_private(&iso)?;
    // The seed's copy is the one the VM reads; the loose files go.
    let _ = std::fs::remove_dir_all(&seed);
    let root = vm_dir.join("root.qcow2");
    if !root.exists() {
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(release.dir.join("disk.raw"))
                .arg(&root),
            "qemu-img (the root disk)",
        )?;
    }
    let slice = vm_dir.join(SLICE_DISK);
    if !slice.exists() {
        let making = vm_dir.join(".slice.raw.tmp");
        let _ = std::fs::remove_file(&making);
        run(
            Command::new("mke2fs")
                .args(["-q", "-t", "ext4", "-L", SLICE_LABEL, "-F"])
                .arg(&making)
                .arg(format!("{}M", config.slice_mib)),
            "mke2fs (the slice)",
        )?;
        std::fs::rename(&making, &slice).map_err(|e| transient("renaming", &making, e))?;
    }
    Ok(())
}

fn set_private(path: &Path) -> Result<(), ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| transient("protecting", path, e))
}

/// What qemu's `-name` says, by which a VM's qemu is found again.
pub(super) fn process_name(vm_dir: &Path) -> String {
    format!("local-vm:{}", escape(vm_dir))
}

/// The qemu command that boots the VM in `vm_dir`, reporting to control at `control` (a
/// host:port on this machine). Without `slice.raw` it boots with no slice disk.
pub(super) fn command(
    vm_dir: &Path,
    release: &Release,
    config: &QemuConfig,
    control: &str,
) -> Command {
    let mut qemu = Command::new(&config.qemu);
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", &format!("q35,accel={}", config.accel)])
        .args(["-m", &config.memory_mib.to_string()])
        .args(["-smp", &config.cpus.to_string()]);
    if let Boot::Kernel { cmdline } = &release.boot {
        qemu.arg("-kernel")
            .arg(release.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(release.dir.join("initrd.img"))
            .args(["-append", cmdline]);
    }
    // The root disk is the only one the firmware may boot from (a slice or a seed never is).
    qemu.arg("-drive")
        .arg(drive(&vm_dir.join("root.qcow2"), "qcow2", "root", "none"))
        .args(["-device", "virtio-blk-pci,drive=root,bootindex=0"])
        .args(["-boot", "strict=on"]);
    let slice = vm_dir.join("slice.raw");
    if slice.exists() {
        qemu.arg("-drive")
            .arg(drive(&slice, "raw", "slice", "virtio"));
    }
    qemu.arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on,media=cdrom",
            escape(&vm_dir.join("seed.iso"))
        ))
        .arg("-netdev")
        .arg(format!(
            "user,id=net0,restrict=on,guestfwd=tcp:{GUEST_CONTROL_ADDRESS}-cmd:socat - TCP:{control}"
        ))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .args(["-device", "virtio-rng-pci"])
        // A spare PCIe port, where a volume lent to the VM is hot-plugged.
        .args([
            "-device",
            &format!("pcie-root-port,id={HOTPLUG_PORT},chassis=1"),
        ])
        .arg("-serial")
        .arg(format!("file:{}", vm_dir.join("console.log").display()))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            vm_dir.join("qmp.sock").display()
        ))
        .arg("-name")
        .arg(process_name(vm_dir));
    qemu
}

/// A disk's `-drive`: `interface` is `virtio` for a disk of its own, `none` for one a
/// `-device` names.
fn drive(path: &Path, format: &str, id: &str, interface: &str) -> String {
    format!(
        "file={},format={format},if={interface},id={id},cache=writeback,discard=unmap",
        escape(path)
    )
}

/// A path in a qemu option value, where a comma is written twice.
fn escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Asks the VM to shut down, as a cloud's ACPI shutdown does (`system_powerdown` over QMP).
/// The caller waits for qemu to exit and powers it off after its grace period.
pub(super) fn acpi_shutdown(vm_dir: &Path) -> Result<(), ProviderError> {
    let mut qmp = Qmp::connect(vm_dir)?;
    qmp.execute(&json!({"execute": "system_powerdown"}))?;
    Ok(())
}

/// The id of a lent volume's disk in the VM it is lent to (one at a time).
const LENT: &str = "lent";

/// Where a volume appears in the VM it is lent to: its disk's serial, by which the guest's
/// udev names it (`/dev/disk/by-id/virtio-<serial>`; virtio keeps at most 20 bytes of it).
pub(super) fn lent_device(volume_id: &str) -> String {
    format!("/dev/disk/by-id/virtio-{}", serial(volume_id))
}

/// The serial a lent volume's disk carries: the end of its id, at most 20 characters.
fn serial(volume_id: &str) -> &str {
    let start = volume_id
        .char_indices()
        .rev()
        .nth(19)
        .map_or(0, |(at, _)| at);
    &volume_id[start..]
}

/// Lends the disk `disk` to the running VM in `vm_dir` as Hetzner attaches a volume to a
/// running server: hot-plugged on the VM's spare PCI Express port with the serial
/// [`lent_device`] names, and writable, as Hetzner's are (the clone's `vm-agent clone-slice`
/// mounts it read-only, which replays its journal first if its VM did not shut down cleanly;
/// a read-only disk could not be mounted then). Lent already, it is left as it is.
pub(super) fn lend_disk(vm_dir: &Path, disk: &Path, volume_id: &str) -> Result<(), ProviderError> {
    let mut qmp = Qmp::connect(vm_dir)?;
    let added = qmp.execute(&json!({
        "execute": "blockdev-add",
        "arguments": {"node-name": LENT, "driver": "raw", "read-only": false,
                      "file": {"driver": "file", "filename": disk.display().to_string()}},
    }));
    already(added, "Duplicate nodes")?;
    let plugged = qmp.execute(&json!({
        "execute": "device_add",
        "arguments": {"driver": "virtio-blk-pci", "id": LENT, "drive": LENT,
                      "serial": serial(volume_id), "bus": HOTPLUG_PORT},
    }));
    already(plugged, "Duplicate device ID")
}

/// Takes the lent disk back from the running VM in `vm_dir`, once its OS has let go of it (a
/// PCI Express unplug the guest acknowledges). Not lent, nothing is done.
pub(super) fn take_back_disk(vm_dir: &Path) -> Result<(), ProviderError> {
    let mut qmp = Qmp::connect(vm_dir)?;
    let deleted = qmp.execute(&json!({"execute": "device_del", "arguments": {"id": LENT}}));
    match deleted {
        Ok(_) => qmp.wait_event("DEVICE_DELETED", LENT, UNPLUG_WITHIN)?,
        Err(e) if e.message.contains("not found") => {}
        Err(e) => return Err(e),
    }
    let removed = qmp.execute(&json!({
        "execute": "blockdev-del", "arguments": {"node-name": LENT}
    }));
    match removed {
        Err(e) if e.message.contains("Failed to find node") => Ok(()),
        other => other.map(drop),
    }
}

/// Whether the VM in `vm_dir` runs (its qemu answers on its QMP socket).
pub(super) fn is_up(vm_dir: &Path) -> bool {
    UnixStream::connect(vm_dir.join("qmp.sock")).is_ok()
}

/// How long the guest's OS may take to let go of an unplugged disk.
const UNPLUG_WITHIN: Duration = Duration::from_mins(1);

/// A refusal that says the thing is done already (`mark` in qemu's words) is success.
fn already(result: Result<Value, ProviderError>, mark: &str) -> Result<(), ProviderError> {
    match result {
        Err(e) if e.message.contains(mark) => Ok(()),
        other => other.map(drop),
    }
}

/// A session on a VM's QMP socket, capabilities negotiated.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Qmp {
    fn connect(vm_dir: &Path) -> Result<Self, ProviderError> {
        let path = vm_dir.join("qmp.sock");
        let fail = |e: std::io::Error| transient("talking to qemu over", &path, e);
        let stream = UnixStream::connect(&path).map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        let writer = stream.try_clone().map_err(fail)?;
        let mut qmp = Self {
            writer,
            reader: BufReader::new(stream),
            path,
        };
        qmp.line()?; // the greeting
        qmp.execute(&json!({"execute": "qmp_capabilities"}))?;
        Ok(qmp)
    }

    /// The next message, `None` when the read timed out.
    fn line(&mut self) -> Result<Option<Value>, ProviderError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(ProviderError::transient("qemu closed its QMP socket")),
            Ok(_) => serde_json::from_str(&line).map(Some).map_err(|e| {
                ProviderError::transient(format!("qemu said something else than JSON: {e}"))
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(transient("reading", &self.path, e)),
        }
    }

    /// Runs `command` and returns its answer; qemu's refusal is an error with its words.
    fn execute(&mut self, command: &Value) -> Result<Value, ProviderError> {
        writeln!(self.writer, "{command}").map_err(|e| transient("writing to", &self.path, e))?;
        loop {
            // Events may come between a command and its answer.
            let Some(message) = self.line()? else {
                return Err(ProviderError::transient(format!(
                    "qemu did not answer {command}"
                )));
            };
            if let Some(answer) = message.get("return") {
                return Ok(answer.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(ProviderError::transient(format!(
                    "qemu refused {}: {}",
                    command["execute"],
                    error["desc"].as_str().unwrap_or("no reason given")
                )));
            }
        }
    }

    /// Waits up to `within` for the event `name` about the device `device`.
    fn wait_event(
        &mut self,
        name: &str,
        device: &str,
        within: Duration,
    ) -> Result<(), ProviderError> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(message) = self.line()?
                && message["event"] == name
                && message["data"]["device"] == device
            {
                return Ok(());
            }
        }
        Err(ProviderError::transient(format!(
            "the VM's OS did not let go of its disk {device} within {within:?}"
        )))
    }
}

/// The host:port a control URL (`http://127.0.0.1:8080`) is served on.
pub(super) fn host_port(url: &str) -> Result<String, ProviderError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ProviderError::permanent(format!("control URL {url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| ProviderError::permanent(format!("control URL {url} has no host")))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| ProviderError::permanent(format!("control URL {url} has no port")))?;
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(images_dir: &Path) -> QemuConfig {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            images_dir: images_dir.to_owned(),
            memory_mib: 1024,
            cpus: 1,
            slice_mib: 64,
            accel: "tcg".to_owned(),
            shutdown_grace: Duration::from_mins(1),
        }
    }

    fn args_of(command: &Command) -> Vec<String> {
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_lent_volume_is_named_by_the_end_of_its_id() {
        assert_eq!(
            lent_device("vol-01m8t131rj3t5qnr95fe3eg865"),
            "/dev/disk/by-id/virtio-31rj3t5qnr95fe3eg865"
        );
        assert_eq!(serial("vol-1"), "vol-1");
    }

    #[test]
    fn a_release_is_a_directory_of_the_images_dir_or_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let release = dir.path().join("2026.12.0");
        std::fs::create_dir(&release).unwrap();
        std::fs::write(release.join("disk.raw"), b"x").unwrap();
        let missing = Release::find(&config, "2026.12.0").unwrap_err();
        assert!(missing.message.contains("manifest.json"), "{missing:?}");
        std::fs::write(
            release.join("manifest.json"),
            br#"{"boot": {"firmware": "bios", "loader": "grub"}}"#,
        )
        .unwrap();
        let found = Release::find(&config, "2026.12.0").unwrap();
        assert_eq!(found.boot, Boot::Firmware);
        let absolute = release.display().to_string();
        assert_eq!(Release::find(&config, &absolute).unwrap().dir, release);
        for escaping in ["../2026.12.0", "a/b", "", ".hidden"] {
            assert!(Release::find(&config, escaping).is_err(), "{escaping}");
        }

        let vm_dir = dir.path().join("vm,1");
        let args = args_of(&command(&vm_dir, &found, &config, "127.0.0.1:8080"));
        let joined = args.join(" ");
        assert!(joined.contains("restrict=on"), "{joined}");
        assert!(!joined.contains("hostfwd"), "nothing forwarded into the VM");
        assert!(
            joined.contains("guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:8080"),
            "{joined}"
        );
        assert!(
            joined.contains("vm,,1/root.qcow2"),
            "commas doubled: {joined}"
        );
        assert!(!joined.contains("slice.raw"), "no slice disk, no drive");
        assert!(
            !joined.contains("-kernel"),
            "the disk boots itself: {joined}"
        );
        assert!(
            joined.contains("virtio-blk-pci,drive=root,bootindex=0"),
            "{joined}"
        );
        assert_eq!(args.last().unwrap(), &process_name(&vm_dir));
        assert_eq!(
            host_port("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(host_port("http://10.0.2.100").unwrap(), "10.0.2.100:80");
    }

    #[test]
    fn a_release_of_the_earlier_recipe_boots_its_kernel_directly() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let release = dir.path().join("2026.11.0");
        std::fs::create_dir(&release).unwrap();
        let manifest = br#"{"boot": {"kernel": "vmlinuz", "initrd": "initrd.img",
            "cmdline": "root=LABEL=root ro console=ttyS0"}}"#;
        for (file, bytes) in [("disk.raw", &b"x"[..]), ("manifest.json", manifest)] {
            std::fs::write(release.join(file), bytes).unwrap();
        }
        let missing = Release::find(&config, "2026.11.0").unwrap_err();
        assert!(missing.message.contains("vmlinuz"), "{missing:?}");
        for file in ["vmlinuz", "initrd.img"] {
            std::fs::write(release.join(file), b"x").unwrap();
        }
        let found = Release::find(&config, "2026.11.0").unwrap();
        let args = args_of(&command(
            &dir.path().join("vm"),
            &found,
            &config,
            "127.0.0.1:1",
        ));
        let joined = args.join(" ");
        assert!(
            joined.contains("-append root=LABEL=root ro console=ttyS0"),
            "{joined}"
        );
        assert!(joined.contains(&format!("-kernel {}", release.join("vmlinuz").display())));
    }
}
