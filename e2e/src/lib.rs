//! A real Kubernetes control plane for tests.
//!
//! [`ControlPlane::start`] runs etcd and kube-apiserver as processes on
//! loopback ports, with certificates made for the run (a CA, the serving
//! certificate for `localhost` and `127.0.0.1`, a client certificate in
//! `system:masters`, and the service-account signing key), waits until the
//! apiserver answers and the `default` namespace exists, and hands tests a
//! `kube::Client` and a kubeconfig file that kubectl and helm can use too.
//! Everything stops and is removed when it is dropped.
//!
//! With `KUBECONFIG` set the same tests run against that cluster instead.
//!
//! The binaries come from `e2e/tools.sh`, which builds them once per version
//! from the Go module proxy into `~/.cache/tessera/tools/bin`
//! (`TESSERA_TOOLS_BIN` overrides the directory).

pub mod image;
pub mod install;
pub mod node;
pub mod processes;

pub use tessera_testkit::{Proc, Signal, free_port, until};

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// How long the control plane may take to come up on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The directory holding etcd, kube-apiserver, kubectl, kwok and helm.
pub fn tools_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TESSERA_TOOLS_BIN") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    Path::new(&home).join(".cache/tessera/tools/bin")
}

/// The path of a test tool, or an error saying how to build it.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let p = tools_bin().join(name);
    if p.exists() {
        Ok(p)
    } else {
        bail!("{} not found; run e2e/tools.sh (or `make tools`) to build the test tools", p.display())
    }
}

/// The path of a Tessera program (`tessera`, `tessera-operator`) built in
/// this workspace: next to the test executable's `deps/` directory, or
/// beside the running program (`tessera-e2e-cluster`).
/// `cargo test --workspace` builds them (each for its own package's
/// integration tests); `cargo test -p tessera-e2e` alone does not.
pub fn tessera_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("a target directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("a target directory");
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} not found; build the programs first: cargo build --workspace --bins", p.display());
    p
}

/// How the harness's own control plane is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The address the apiserver listens on and advertises (127.0.0.1 by
    /// default): a real node reaches it from its network namespace.
    pub address: Option<Ipv4Addr>,
    /// Also runs kube-controller-manager and kube-scheduler, for real pods
    /// (service accounts and their tokens, scheduling, DaemonSets).
    pub controllers: bool,
}

/// A running control plane (or an external cluster).
pub struct ControlPlane {
    client: Client,
    config: Config,
    kubeconfig: PathBuf,
    // Dropped in order: the controllers and the apiserver before etcd,
    // then the files.
    procs: Vec<Proc>,
    ca: Option<Ca>,
    server: String,
    controllers: bool,
    _dir: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// The cluster named by `KUBECONFIG`, or a fresh etcd and kube-apiserver.
    pub async fn start() -> anyhow::Result<Self> {
        if let Ok(path) = std::env::var("KUBECONFIG") {
            let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&path)?, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading KUBECONFIG {path}"))?;
            let client = Client::try_from(config.clone())?;
            let server = config.cluster_url.to_string();
            return Ok(Self {
                client,
                config,
                kubeconfig: path.into(),
                procs: Vec::new(),
                ca: None,
                server,
                controllers: true,
                _dir: None,
            });
        }
        Self::start_with(Options::default()).await
    }

    /// The harness's own etcd and kube-apiserver (whatever `KUBECONFIG`
    /// says), started as `options` asks.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let etcd_bin = tool("etcd")?;
        let apiserver_bin = tool("kube-apiserver")?;
        let dir = tempfile::Builder::new().prefix("tessera-k8s-").tempdir()?;
        let d = dir.path();
        let address = options.address.unwrap_or(Ipv4Addr::LOCALHOST);
        let (ca, certs) = Certs::generate(d, address)?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_args: Vec<String> = vec![
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            // Test data need not survive a power cut; fsync would dominate.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let mut procs = vec![Proc::spawn("etcd", &etcd_bin, &etcd_args, d)?];

        let port = free_port_on(address)?;
        let server = format!("https://{address}:{port}");
        let mut api_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--tls-cert-file={}", certs.serving_cert.display()),
            format!("--tls-private-key-file={}", certs.serving_key.display()),
            format!("--client-ca-file={}", certs.ca_cert.display()),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            format!("--service-account-issuer={server}/"),
            format!("--service-account-key-file={}", certs.sa_pub.display()),
            format!("--service-account-signing-key-file={}", certs.sa_key.display()),
            // For logs and exec: kubelets accept the CA's admin.
            format!("--kubelet-client-certificate={}", certs.client_cert.display()),
            format!("--kubelet-client-key={}", certs.client_key.display()),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--v=1".into(),
        ];
        if options.controllers {
            api_args.push("--enable-admission-plugins=NodeRestriction".into());
        } else {
            // No controller manager makes the service accounts it would ask for.
            api_args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        procs.push(Proc::spawn("kube-apiserver", &apiserver_bin, &api_args, d)?);

        let kubeconfig = d.join("kubeconfig");
        fs::write(&kubeconfig, kubeconfig_yaml(&server, &certs.ca_cert, &certs.client_cert, &certs.client_key))?;
        if options.controllers {
            procs.push(start_controller_manager(d, &kubeconfig, &certs)?);
            let args = vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ];
            procs.push(Proc::spawn("kube-scheduler", &tool("kube-scheduler")?, &args, d)?);
        }
        let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default())
            .await
            .context("loading the generated kubeconfig")?;
        let client = Client::try_from(config.clone())?;

        let mut plane = Self {
            client,
            config,
            kubeconfig,
            procs,
            ca: Some(ca),
            server,
            controllers: options.controllers,
            _dir: Some(dir),
        };
        plane.wait_ready().await?;
        Ok(plane)
    }

    /// A kubeconfig in `dir` for a user the cluster's CA vouches for
    /// (`CN=common_name`, `O=` each of `groups`), named `<name>.kubeconfig`.
    pub fn client_kubeconfig(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        groups: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let ca = self.ca.as_ref().context("an external cluster's CA issues no certificates here")?;
        let (cert, key) = ca.issue_client(dir, name, common_name, groups)?;
        let path = dir.join(format!("{name}.kubeconfig"));
        fs::write(&path, kubeconfig_yaml(&self.server, &ca.cert_file, &cert, &key))?;
        Ok(path)
    }

    /// The file of the CA that signs the apiserver's and clients' certificates.
    pub fn ca_file(&self) -> anyhow::Result<&Path> {
        Ok(&self.ca.as_ref().context("an external cluster's CA is not known here")?.cert_file)
    }

    /// Until the apiserver answers and has made the `default` namespace.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        loop {
            for p in &mut self.procs {
                p.check()?;
            }
            if let Ok(Some(_)) = namespaces.get_opt("default").await
                && (!self.controllers || self.has_default_service_account().await)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.procs.iter().map(|p| format!("{}:\n{}", p.name(), p.log_tail())).collect();
                bail!("the control plane did not become ready in {START_TIMEOUT:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the controller manager has made the `default` namespace's
    /// service account, which every pod there needs.
    async fn has_default_service_account(&self) -> bool {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        matches!(accounts.get_opt("default").await, Ok(Some(_)))
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client configuration, for components that make their own clients.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// A kubeconfig file for kubectl, helm and the operator.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether this is the harness's own apiserver (not `KUBECONFIG`).
    pub fn is_local(&self) -> bool {
        !self.procs.is_empty()
    }

    /// Starts kwok managing the nodes annotated `kwok.x-k8s.io/node: fake`:
    /// it keeps them Ready and runs their pods without containers. Stops
    /// with the returned handle.
    pub fn start_kwok(&self) -> anyhow::Result<Kwok> {
        let dir = tempfile::Builder::new().prefix("tessera-kwok-").tempdir()?;
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            "--cidr=10.0.0.0/24".into(),
            "--node-ip=10.0.0.1".into(),
            format!("--server-address=127.0.0.1:{}", free_port()?),
            format!("--config={}", concat!(env!("CARGO_MANIFEST_DIR"), "/kwok-stages.yaml")),
        ];
        let proc = Proc::spawn("kwok", &tool("kwok")?, &args, dir.path())?;
        Ok(Kwok { _proc: proc, _dir: dir })
    }

    /// Runs kubectl against this cluster; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(tool("kubectl")?).arg("--kubeconfig").arg(&self.kubeconfig).args(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The controllers and the apiserver first, so they do not log
        // etcd's departure at length.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

/// A running kwok controller.
pub struct Kwok {
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Kwok {
    /// The end of kwok's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self._proc.log_tail()
    }
}

/// A node for kwok to keep Ready, in the given zone and rack.
pub fn fake_node(name: &str, zone: &str, rack: &str) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/region": "test",
                "topology.kubernetes.io/zone": zone,
                (tessera_api::keys::RACK_LABEL): rack,
                "type": "kwok",
            },
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
    }))
    .expect("a valid node")
}

/// The services' virtual addresses.
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// A port on `address` that was free a moment ago.
fn free_port_on(address: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((address, 0))?.local_addr()?.port())
}

fn start_controller_manager(dir: &Path, kubeconfig: &Path, certs: &Certs) -> anyhow::Result<Proc> {
    let args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--service-account-private-key-file={}", certs.sa_key.display()),
        format!("--root-ca-file={}", certs.ca_cert.display()),
        // Each controller acts as its own service account, as in a cluster.
        "--use-service-account-credentials=true".into(),
        "--leader-elect=false".into(),
        "--secure-port=0".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--v=1".into(),
    ];
    Proc::spawn("kube-controller-manager", &tool("kube-controller-manager")?, &args, dir)
}

/// The run's certificate authority, which issues client certificates for
/// components that join later (a kubelet).
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_file: PathBuf,
}

impl Ca {
    fn issue_client(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        groups: &[&str],
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for group in groups {
            params.distinguished_name.push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &Issuer::new(self.params.clone(), &self.key))?;
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        fs::write(&cert_file, cert.pem())?;
        fs::write(&key_file, key.serialize_pem())?;
        Ok((cert_file, key_file))
    }
}

/// Files of the certificates made for one run.
struct Certs {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Certs {
    /// The CA and the certificates of a control plane serving on `address`.
    fn generate(dir: &Path, address: Ipv4Addr) -> anyhow::Result<(Ca, Self)> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "tessera-e2e-ca");
        let ca_cert = ca.self_signed(&ca_key)?;

        let serving_key = KeyPair::generate()?;
        // Pods reach the apiserver as the `kubernetes` Service: its first
        // address and its DNS names.
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "10.0.0.1".to_string()];
        names.extend(
            ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
                .map(String::from),
        );
        if address != Ipv4Addr::LOCALHOST {
            names.push(IpAddr::V4(address).to_string());
        }
        let mut serving = CertificateParams::new(names)?;
        serving.distinguished_name.push(DnType::CommonName, "localhost");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::new(ca.clone(), &ca_key);
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.distinguished_name.push(DnType::CommonName, "tessera-e2e-admin");
        client.distinguished_name.push(DnType::OrganizationName, "system:masters");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer)?;
        drop(issuer);

        let sa_key = KeyPair::generate()?;

        let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            fs::write(&p, pem)?;
            Ok(p)
        };
        let ca_file = write("ca.crt", ca_cert.pem())?;
        let certs = Self {
            ca_cert: ca_file.clone(),
            serving_cert: write("apiserver.crt", serving_cert.pem())?,
            serving_key: write("apiserver.key", serving_key.serialize_pem())?,
            client_cert: write("admin.crt", client_cert.pem())?,
            client_key: write("admin.key", client_key.serialize_pem())?,
            sa_pub: write("sa.pub", sa_key.public_key_pem())?,
            sa_key: write("sa.key", sa_key.serialize_pem())?,
        };
        Ok((Ca { params: ca, key: ca_key, cert_file: ca_file }, certs))
    }
}

fn kubeconfig_yaml(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: tessera-e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: user
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: tessera-e2e
  context:
    cluster: tessera-e2e
    user: user
current-context: tessera-e2e
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}
