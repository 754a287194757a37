//! Container images without a registry or an engine: an OCI image of
//! host binaries (with the shared libraries they load), written as an OCI
//! archive that `ctr images import` takes.
//!
//! The layer is one uncompressed tar written with fixed owners and times,
//! so the same inputs always give the same digests, and containerd keeps
//! an unchanged image instead of importing it again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation containerd names an imported image by, in full.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the tag within a layout.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One entry of the image's file system.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Symlink(PathBuf),
}

/// An image being put together: its files, then its run configuration.
#[derive(Debug, Clone)]
pub struct Image {
    /// The full reference, `localhost/NAME:TAG`.
    reference: String,
    entries: BTreeMap<PathBuf, Entry>,
    entrypoint: Vec<String>,
    env: Vec<String>,
}

/// What an archive holds: the reference and the manifest's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub reference: String,
    pub manifest_digest: String,
}

impl Image {
    /// An empty image to be named `reference` (`localhost/NAME:TAG`).
    pub fn new(reference: &str) -> anyhow::Result<Self> {
        let Some((name, tag)) = reference.rsplit_once(':') else {
            bail!("image reference {reference:?} has no tag (want REGISTRY/NAME:TAG)")
        };
        if !name.contains('/') || tag.is_empty() || tag.contains('/') {
            bail!("image reference {reference:?} is not REGISTRY/NAME:TAG");
        }
        let mut image =
            Self { reference: reference.into(), entries: BTreeMap::new(), entrypoint: Vec::new(), env: Vec::new() };
        image.dir("/tmp");
        Ok(image)
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: impl AsRef<Path>) -> &mut Self {
        let path = path.as_ref();
        for parent in path.ancestors().filter(|p| *p != Path::new("/") && !p.as_os_str().is_empty()) {
            self.entries.entry(parent.to_path_buf()).or_insert(Entry::Dir);
        }
        self
    }

    /// A file copied from the host, keeping its permission bits.
    pub fn file(&mut self, host: impl AsRef<Path>, path: impl AsRef<Path>) -> anyhow::Result<&mut Self> {
        let host = host.as_ref();
        let path = path.as_ref();
        let meta = fs::metadata(host).with_context(|| format!("image file {}", host.display()))?;
        if !meta.is_file() {
            bail!("image file {} is not a regular file", host.display());
        }
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        use std::os::unix::fs::PermissionsExt;
        self.entries.insert(path.into(), Entry::File { source: host.into(), mode: meta.permissions().mode() & 0o7777 });
        Ok(self)
    }

    /// A host program at `path`, with every shared library it loads at the
    /// path the dynamic loader will look for it.
    pub fn program(&mut self, host: impl AsRef<Path>, path: impl AsRef<Path>) -> anyhow::Result<&mut Self> {
        let host = host.as_ref();
        self.file(host, path)?;
        for lib in shared_libraries(host)? {
            let real = fs::canonicalize(&lib).with_context(|| format!("library {}", lib.display()))?;
            self.file(&real, &lib)?;
        }
        Ok(self)
    }

    /// A symbolic link at `path` pointing at `target`.
    pub fn symlink(&mut self, target: impl AsRef<Path>, path: impl AsRef<Path>) -> &mut Self {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        self.entries.insert(path.into(), Entry::Symlink(target.as_ref().into()));
        self
    }

    pub fn entrypoint(&mut self, argv: &[&str]) -> &mut Self {
        self.entrypoint = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(&mut self, var: &str) -> &mut Self {
        self.env.push(var.into());
        self
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Writes the image as an OCI archive (an image layout in a tar).
    pub fn write_archive(&self, out: &Path) -> anyhow::Result<Written> {
        let layer = self.layer()?;
        let layer_digest = sha256(&layer);
        let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()];
        env.extend(self.env.iter().cloned());
        let config = serde_json::to_vec(&json!({
            "architecture": arch(),
            "os": "linux",
            "config": {"Entrypoint": self.entrypoint, "Env": env, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": layer.len()}],
        }))?;
        let manifest_digest = sha256(&manifest);
        let tag = self.reference.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [{
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {CONTAINERD_NAME: self.reference, REF_NAME: tag},
            }],
        }))?;

        // Written beside its final name and renamed, so a reader never sees
        // half an archive.
        let tmp = out.with_extension("partial");
        let mut archive =
            tar::Builder::new(fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
        append_bytes(&mut archive, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append_bytes(&mut archive, "index.json", &index)?;
        for blob in [&layer, &config, &manifest] {
            let name = format!("blobs/sha256/{}", &sha256(blob)["sha256:".len()..]);
            append_bytes(&mut archive, &name, blob)?;
        }
        let file = archive.into_inner()?;
        file.sync_all()?;
        fs::rename(&tmp, out)?;
        Ok(Written { reference: self.reference.clone(), manifest_digest })
    }

    /// The one layer: every entry, parents first (the map is ordered).
    fn layer(&self) -> anyhow::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let name = path.strip_prefix("/").unwrap_or(path);
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, name, std::io::empty())?;
                }
                Entry::File { source, mode } => {
                    let bytes = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, name, bytes.as_slice())?;
                }
                Entry::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, name, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }
}

/// The programs of the Tessera image, all in `/usr/local/bin`.
pub const TESSERA_PROGRAMS: [&str; 4] = ["tessera", "tessera-operator", "tessera-chunkserver", "tessera-csi"];

/// The Tessera image the Helm chart runs, made from the programs in
/// `bin_dir` (a cargo target directory's `release` or `debug`) and the
/// shared libraries they load: the Dockerfile's image, for clusters without
/// an engine or a registry.
pub fn tessera(reference: &str, bin_dir: &Path) -> anyhow::Result<Image> {
    let mut image = Image::new(reference)?;
    for name in TESSERA_PROGRAMS {
        let program = bin_dir.join(name);
        if !program.is_file() {
            bail!("{} not found: build it first (cargo build --release --bins)", program.display());
        }
        image.program(&program, Path::new("/usr/local/bin").join(name))?;
    }
    // The build machine's CA bundle (Debian's path, which rustls-native-certs
    // reads), so https sources work from the image too.
    let bundle = Path::new(CA_BUNDLE);
    if bundle.is_file() {
        image.file(bundle, bundle)?;
    }
    image.entrypoint(&["/usr/local/bin/tessera"]);
    Ok(image)
}

/// Where Debian keeps its CA certificates as one file.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A busybox image for test workloads: `sh`, `sha256sum`, `cat` and the
/// rest of busybox's applets on the PATH, from the host's `/bin/busybox`.
pub fn busybox(reference: &str) -> anyhow::Result<Image> {
    let mut image = Image::new(reference)?;
    image.program("/bin/busybox", "/bin/busybox")?;
    let out = Command::new("/bin/busybox").arg("--list").output().context("running /bin/busybox --list")?;
    if !out.status.success() {
        bail!("/bin/busybox --list failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        image.symlink("busybox", Path::new("/bin").join(applet));
    }
    image.entrypoint(&["/bin/sh"]);
    Ok(image)
}

/// A pod sandbox ("pause") image: busybox's shell waiting for a signal
/// and exiting on TERM or INT, as the sandbox's process must.
pub fn pause(reference: &str) -> anyhow::Result<Image> {
    let mut image = Image::new(reference)?;
    image.program("/bin/busybox", "/bin/busybox")?;
    image.symlink("busybox", "/bin/sh").symlink("busybox", "/bin/sleep");
    image.entrypoint(&["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]);
    Ok(image)
}

/// The shared libraries `program` loads (its dynamic loader included),
/// as absolute paths; none for a static program.
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output().context("running ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd says so, and fails, for a static program.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_ldd(&text))
}

/// The library paths in ldd's output: `name => /path (addr)` and the
/// loader's `/path (addr)`; the vDSO has no file.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_mtime(0);
    header.set_mode(0o644);
    header.set_size(bytes.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)?;
    Ok(())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The image architecture of this build, in OCI's words.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Every file of an OCI archive by name.
    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
        let mut files = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(name, bytes);
        }
        files
    }

    fn test_image(dir: &Path) -> Image {
        let prog = dir.join("prog");
        fs::write(&prog, b"#!/bin/sh\necho hi\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
        let mut image = Image::new("localhost/t:1").unwrap();
        image
            .file(&prog, "/usr/local/bin/prog")
            .unwrap()
            .symlink("prog", "/usr/local/bin/alias")
            .entrypoint(&["/usr/local/bin/prog"]);
        image
    }

    #[test]
    fn every_blob_is_named_by_its_digest_and_the_index_reaches_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.oci.tar");
        let written = test_image(dir.path()).write_archive(&out).unwrap();
        let files = read_archive(&out);
        for (name, bytes) in files.iter().filter(|(n, _)| n.starts_with("blobs/")) {
            assert_eq!(format!("blobs/sha256/{}", &sha256(bytes)[7..]), *name);
        }
        let blob = |digest: &str| &files[&format!("blobs/sha256/{}", &digest[7..])];
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], written.manifest_digest);
        assert_eq!(m["annotations"][CONTAINERD_NAME], "localhost/t:1");
        assert_eq!(m["annotations"][REF_NAME], "1");
        let manifest: serde_json::Value = serde_json::from_slice(blob(&written.manifest_digest)).unwrap();
        assert_eq!(m["size"], blob(&written.manifest_digest).len());
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/prog");

        let mut layer = tar::Archive::new(blob(layer_digest).as_slice());
        let mut seen = BTreeMap::new();
        for entry in layer.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap();
            let link = entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            seen.insert(name, (kind, mode, link, bytes));
        }
        let names: Vec<&str> = seen.keys().map(String::as_str).collect();
        assert_eq!(names, ["tmp", "usr", "usr/local", "usr/local/bin", "usr/local/bin/alias", "usr/local/bin/prog"]);
        let prog = &seen["usr/local/bin/prog"];
        assert_eq!((prog.0, prog.1, prog.3.as_slice()), (tar::EntryType::Regular, 0o755, &b"#!/bin/sh\necho hi\n"[..]));
        assert_eq!(seen["usr/local/bin/alias"].2.as_deref(), Some("prog"));
    }

    #[test]
    fn the_same_inputs_give_the_same_digest_and_a_changed_file_another() {
        let dir = tempfile::tempdir().unwrap();
        let a = test_image(dir.path()).write_archive(&dir.path().join("a.tar")).unwrap();
        let b = test_image(dir.path()).write_archive(&dir.path().join("b.tar")).unwrap();
        assert_eq!(a, b);
        // The same image but for one byte of the file's contents.
        let changed = test_image(dir.path());
        fs::write(dir.path().join("prog"), b"#!/bin/sh\necho hj\n").unwrap();
        let c = changed.write_archive(&dir.path().join("c.tar")).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest);
    }

    #[test]
    fn ldd_output_gives_libraries_and_the_loader_but_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
    }

    #[test]
    fn a_program_brings_its_libraries() {
        let mut image = Image::new("localhost/t:1").unwrap();
        // The test executable itself is a dynamic program on Linux.
        let exe = std::env::current_exe().unwrap();
        image.program(&exe, "/prog").unwrap();
        let libc =
            image.entries.keys().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so")));
        assert!(libc.is_some(), "no libc among {:?}", image.entries.keys().collect::<Vec<_>>());
    }

    #[test]
    fn a_reference_without_registry_or_tag_is_refused() {
        for bad in ["busybox", "busybox:1", "localhost/busybox", "localhost/busybox:"] {
            assert!(Image::new(bad).is_err(), "{bad} accepted");
        }
    }
}
