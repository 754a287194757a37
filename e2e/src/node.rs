//! A real node for the tests that run pods: containerd and a kubelet in a
//! network namespace of their own, registered with the test control plane.
//!
//! [`NodeCluster::start`] makes the namespace (a veth pair to the host: the
//! apiserver listens on the host end, the node's address is the other end,
//! pods get addresses from a bridge behind it), starts etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler on the host end, then
//! containerd, the kubelet, kube-proxy and CoreDNS (behind a `kube-dns`
//! Service) inside the namespace, and waits until the Node is Ready and
//! Services are served. [`NodeCluster::shutdown`] takes it all down again and checks
//! that no process, mount, container, cgroup, namespace or kernel setting
//! of the run is left; dropping it does the same without the check.
//!
//! The processes enter the namespace with `nsenter --net`, not `ip netns
//! exec`: they must share the host's mount namespace, where the kubelet's
//! mounts are made for containerd's containers to see.
//! See docs/decisions/0018-real-node-test-cluster.md.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;

use crate::image::Image;
use crate::{ControlPlane, Options, Proc, tool};

/// The node's name in the cluster.
pub const NODE: &str = "tessera-node";
/// The pause image every pod sandbox runs.
pub const PAUSE_IMAGE: &str = "localhost/tessera-pause:e2e";
/// The namespace the CRI keeps its images and containers in.
const CRI_NS: &str = "k8s.io";
/// Kernel settings the kubelet changes for itself, restored afterwards.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// The cluster DNS Service's address, in the control plane's service range.
pub const DNS_IP: &str = "10.0.0.10";
/// How long the node may take to become Ready on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The node's network: a namespace joined to the host by a veth pair.
pub struct NodeNet {
    /// The namespace, `tessera-node-<index>-<pid>` (the pid lets a later
    /// run remove what a killed one left).
    pub netns: String,
    /// The host end's address, where the apiserver listens.
    pub host_ip: Ipv4Addr,
    /// The node's address (the namespace's end).
    pub node_ip: Ipv4Addr,
    /// The pods' subnet, on a bridge inside the namespace.
    pub pod_cidr: String,
    host_if: String,
}

/// Serialises the choice of a free index among this process's tests.
static NET_INDEX: Mutex<()> = Mutex::new(());

impl NodeNet {
    pub fn create() -> anyhow::Result<Self> {
        let _one_at_a_time = NET_INDEX.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale_namespaces();
        let used: BTreeSet<u8> = netns_list().iter().filter_map(|n| parse_netns(n)).map(|(i, _)| i).collect();
        let index = (1..=250u8)
            .find(|i| !used.contains(i) && !Path::new(&format!("/sys/class/net/tsr{i}h")).exists())
            .context("no free node network index (250 in use)")?;
        let net = Self {
            netns: format!("tessera-node-{index}-{}", std::process::id()),
            host_ip: Ipv4Addr::new(10, 213, index, 1),
            node_ip: Ipv4Addr::new(10, 213, index, 2),
            pod_cidr: format!("10.214.{index}.0/24"),
            host_if: format!("tsr{index}h"),
        };
        let node_if = format!("tsr{index}n");
        let ns = net.netns.as_str();
        ip(&["netns", "add", ns])?;
        // From here on a failure removes the namespace (and with it the pair).
        let made = (|| {
            ip(&["link", "add", &net.host_if, "type", "veth", "peer", "name", &node_if])?;
            ip(&["link", "set", &node_if, "netns", ns])?;
            ip(&["addr", "add", &format!("{}/30", net.host_ip), "dev", &net.host_if])?;
            ip(&["link", "set", &net.host_if, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/30", net.node_ip), "dev", &node_if])?;
            ip(&["-n", ns, "link", "set", &node_if, "up"])?;
            ip(&["-n", ns, "route", "add", "default", "via", &net.host_ip.to_string()])?;
            // The host reaches pods through the node, as a router would.
            ip(&["route", "add", &net.pod_cidr, "via", &net.node_ip.to_string()])?;
            // The node forwards between its pods' bridge and the veth, and
            // bridged replies pass through kube-proxy's NAT (a pod reaching
            // a Service whose endpoint is on the same bridge).
            net.run_in(
                Path::new("sh"),
                &[
                    "-c",
                    "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
                ],
            )
        })();
        match made {
            Ok(()) => Ok(net),
            Err(e) => {
                net.remove();
                Err(e)
            }
        }
    }

    /// `nsenter`'s arguments that run `program args` inside the namespace.
    pub fn enter(&self, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
        let mut argv = vec![format!("--net=/run/netns/{}", self.netns), "--".into(), program.display().to_string()];
        argv.extend(args.iter().cloned());
        (PathBuf::from("nsenter"), argv)
    }

    /// Runs `program args` inside the namespace to completion.
    pub fn run_in(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (nsenter, argv) = self.enter(program, &args);
        run(Command::new(nsenter).args(argv))
    }

    /// Deletes the namespace (its processes first) and waits until the
    /// host end of the pair, and the route through it, are gone.
    fn remove(&self) {
        remove_namespace(&self.netns);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new("/sys/class/net").join(&self.host_if).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if netns_list().contains(&self.netns) {
            left.push(format!("network namespace {}", self.netns));
        }
        if Path::new("/sys/class/net").join(&self.host_if).exists() {
            left.push(format!("interface {}", self.host_if));
        }
        left
    }
}

/// A kubelet and containerd, stopped by [`RealNode::stop`].
pub struct RealNode {
    pub name: String,
    dir: PathBuf,
    socket: PathBuf,
    kubelet: Option<Proc>,
    containerd: Option<Proc>,
    kube_proxy: Option<Proc>,
    dns: Option<Proc>,
    node_ip: Ipv4Addr,
    sysctls: Vec<(String, String)>,
    containers: BTreeSet<String>,
    /// Shared directories containerd and the kubelet make when missing
    /// (shim sockets, container log links, the CRI's cgroups), that did
    /// not exist before this node: removed with it when empty.
    made_dirs: Vec<PathBuf>,
}

impl RealNode {
    fn start(cp: &ControlPlane, net: &NodeNet, dir: &Path) -> anyhow::Result<Self> {
        for bin in ["containerd", "containerd-shim-runc-v2", "ctr", "runc"] {
            which(bin).with_context(|| {
                format!("{bin} is needed for a real node (Debian: apt-get install containerd runc)")
            })?;
        }
        if !Path::new("/usr/lib/cni/bridge").exists() {
            bail!(
                "/usr/lib/cni/bridge is needed for a real node (Debian: apt-get install containernetworking-plugins)"
            );
        }
        fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .filter_map(|k| {
                Some((k.to_string(), fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?.trim().to_string()))
            })
            .collect();
        let mut shared =
            vec![PathBuf::from("/run/containerd"), "/run/containerd/s".into(), "/var/log/containers".into()];
        shared.extend(cgroup_hierarchies().into_iter().map(|h| h.join(CRI_NS)));
        let made_dirs = shared.into_iter().filter(|d| !d.exists()).collect();
        let mut node = Self {
            name: NODE.into(),
            dir: dir.into(),
            socket,
            kubelet: None,
            containerd: None,
            kube_proxy: None,
            dns: None,
            node_ip: net.node_ip,
            sysctls,
            containers: BTreeSet::new(),
            made_dirs,
        };
        let booted = (|| {
            node.make_host_dir()?;
            node.start_containerd(net)?;
            node.import(&crate::image::pause(PAUSE_IMAGE)?)?;
            node.start_kubelet(cp, net)?;
            node.start_kube_proxy(cp, net)?;
            node.start_dns(cp, net)
        })();
        match booted {
            Ok(()) => Ok(node),
            Err(e) => {
                node.stop();
                Err(e)
            }
        }
    }

    fn start_containerd(&mut self, net: &NodeNet) -> anyhow::Result<()> {
        let d = &self.dir;
        let cni = d.join("cni");
        fs::create_dir_all(cni.join("net.d"))?;
        fs::write(cni.join("net.d/10-tessera.conflist"), cni_config(&net.pod_cidr, &cni.join("ipam")))?;
        let config = d.join("containerd.toml");
        fs::write(&config, containerd_config(d, &self.socket, &cni.join("net.d")))?;
        let (nsenter, argv) = net.enter(&which("containerd")?, &[format!("--config={}", config.display())]);
        self.containerd = Some(Proc::spawn("containerd", &nsenter, &argv, d)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.containerd.as_mut().expect("started").check()?;
            if self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer on {} in 30 s", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_kubelet(&mut self, cp: &ControlPlane, net: &NodeNet) -> anyhow::Result<()> {
        let d = &self.dir;
        let root = self.kubelet_root();
        fs::create_dir_all(&root)?;
        let kubeconfig =
            cp.client_kubeconfig(d, "kubelet", &format!("system:node:{}", self.name), &["system:nodes"])?;
        let resolv = d.join("resolv.conf");
        fs::write(&resolv, "nameserver 127.0.0.1\n")?;
        let config = d.join("kubelet.yaml");
        fs::write(&config, kubelet_config(d, &self.socket, net.node_ip, cp.ca_file()?, &resolv))?;
        let args = vec![
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", d.join("kubelet-pki").display()),
            format!("--hostname-override={}", self.name),
            format!("--node-ip={}", net.node_ip),
            "--node-labels=topology.kubernetes.io/zone=real,type=real".into(),
            "--v=1".into(),
        ];
        let (nsenter, argv) = net.enter(&tool("kubelet")?, &args);
        self.kubelet = Some(Proc::spawn("kubelet", &nsenter, &argv, d)?.stopped_by(crate::Signal::TERM));
        Ok(())
    }

    /// kube-proxy in iptables mode: Services' virtual addresses, inside the
    /// node's namespace only.
    fn start_kube_proxy(&mut self, cp: &ControlPlane, net: &NodeNet) -> anyhow::Result<()> {
        let d = &self.dir;
        let kubeconfig = cp.client_kubeconfig(d, "kube-proxy", "system:kube-proxy", &[])?;
        let args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={}", self.name),
            "--proxy-mode=iptables".into(),
            format!("--cluster-cidr={}", net.pod_cidr),
            format!("--healthz-bind-address={}:10256", net.node_ip),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            // Leave the machine-wide conntrack table size alone.
            "--conntrack-max-per-core=0".into(),
            "--v=1".into(),
        ];
        let (nsenter, argv) = net.enter(&tool("kube-proxy")?, &args);
        self.kube_proxy = Some(Proc::spawn("kube-proxy", &nsenter, &argv, d)?);
        Ok(())
    }

    /// CoreDNS answering for `cluster.local` on the node's address, behind
    /// the `kube-dns` Service that [`publish_dns`] makes.
    fn start_dns(&mut self, cp: &ControlPlane, net: &NodeNet) -> anyhow::Result<()> {
        let d = &self.dir;
        let corefile = d.join("Corefile");
        fs::write(
            &corefile,
            format!(
                ".:53 {{
    bind {ip}
    errors
    ready {ip}:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
",
                ip = net.node_ip,
                kubeconfig = cp.kubeconfig().display(),
            ),
        )?;
        let (nsenter, argv) = net.enter(&tool("coredns")?, &[format!("-conf={}", corefile.display())]);
        self.dns = Some(Proc::spawn("coredns", &nsenter, &argv, d)?);
        Ok(())
    }

    /// Until kube-proxy has programmed the Services and CoreDNS has read
    /// them.
    async fn wait_services(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for p in [&mut self.kube_proxy, &mut self.dns].into_iter().flatten() {
                p.check()?;
            }
            let proxy = http_ok(SocketAddrV4::new(self.node_ip, 10256), "/healthz");
            let dns = http_ok(SocketAddrV4::new(self.node_ip, 8181), "/ready");
            if proxy && dns {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = [&self.kube_proxy, &self.dns]
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}:\n{}", p.name(), p.log_tail()))
                    .collect();
                bail!(
                    "Services were not served in {READY_TIMEOUT:?} (kube-proxy {proxy}, DNS {dns})\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Until the kubelet has registered the node and it is Ready.
    async fn wait_ready(&mut self, cp: &ControlPlane) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(cp.client());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for p in [&mut self.kubelet, &mut self.containerd].into_iter().flatten() {
                p.check()?;
            }
            if let Ok(Some(node)) = nodes.get_opt(&self.name).await
                && node_ready(&node)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let kubelet = self.kubelet.as_ref().map(Proc::log_tail).unwrap_or_default();
                bail!("node {} was not Ready in {READY_TIMEOUT:?}; kubelet:\n{kubelet}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The kubelet's root directory (`--root-dir`): its plugin registry is
    /// `plugins_registry` in it, pods' volumes are under `pods`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// A directory for the host paths of pods (a chart's `hostPath`
    /// volumes): a shared mount, as `/` is on a systemd machine, so
    /// containers may mount it with Bidirectional propagation.
    pub fn host_dir(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn make_host_dir(&self) -> anyhow::Result<()> {
        use rustix::mount::{MountPropagationFlags, mount_bind, mount_change};
        let host = self.host_dir();
        fs::create_dir_all(&host)?;
        mount_bind(&host, &host).with_context(|| format!("bind-mounting {} on itself", host.display()))?;
        mount_change(&host, MountPropagationFlags::SHARED | MountPropagationFlags::REC)
            .with_context(|| format!("making {} a shared mount", host.display()))?;
        Ok(())
    }

    /// The end of the kubelet's log, for failure messages.
    pub fn kubelet_log(&self) -> String {
        self.kubelet.as_ref().map(Proc::log_tail).unwrap_or_default()
    }

    /// Mount points under the kubelet's root other than the root itself
    /// (volumes still mounted).
    pub fn volume_mounts(&self) -> Vec<PathBuf> {
        let root = self.kubelet_root();
        mounts_under(&root).into_iter().filter(|p| *p != root).collect()
    }

    /// Imports an image into the node's containerd, for pods to run with
    /// `imagePullPolicy: Never` (or IfNotPresent).
    pub fn import(&self, image: &Image) -> anyhow::Result<()> {
        let archive = self.dir.join(format!("{}.oci.tar", image.reference().replace(['/', ':'], "_")));
        image.write_archive(&archive)?;
        self.ctr(&["images", "import", &archive.display().to_string()])?;
        fs::remove_file(&archive)?;
        Ok(())
    }

    /// `ctr` against this node's containerd, in the CRI's namespace.
    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg(format!("--address={}", self.socket.display()))
            .arg(format!("--namespace={CRI_NS}"))
            .args(args)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!("ctr {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the kubelet, then every container, then containerd; unmounts
    /// what they mounted and puts the kernel settings back.
    fn stop(&mut self) {
        for p in [self.dns.take(), self.kube_proxy.take()].into_iter().flatten() {
            let mut p = p;
            let _ = p.stop(crate::Signal::TERM);
        }
        if let Some(mut kubelet) = self.kubelet.take() {
            let _ = kubelet.stop(crate::Signal::TERM);
        }
        if self.containerd.is_some() {
            if let Ok(ids) = self.ctr(&["containers", "ls", "-q"]) {
                self.containers.extend(ids.lines().map(str::to_string));
            }
            for id in &self.containers {
                // Kills the task if it runs, then removes it and its cgroup.
                let _ = self.ctr(&["tasks", "delete", "--force", id]);
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        if let Some(mut containerd) = self.containerd.take() {
            let _ = containerd.stop(crate::Signal::TERM);
        }
        // A shim whose task could not be deleted still names the socket.
        for pid in processes_mentioning(&self.dir) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        unmount_under(&self.dir);
        for (key, value) in &self.sysctls {
            let _ = fs::write(Path::new("/proc/sys").join(key), value);
        }
        // Never through a mount that would not come off (a volume's files
        // are not the run's to delete); the leftover check names it.
        if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        remove_container_log_links(&self.dir);
        // Children before parents; a directory something else uses now is
        // not empty and stays.
        for d in self.made_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for pid in processes_mentioning(&self.dir) {
            let cmd = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ");
            left.push(format!("process {pid}: {cmd}"));
        }
        for mount in mounts_under(&self.dir) {
            left.push(format!("mount {}", mount.display()));
        }
        for id in &self.containers {
            for hierarchy in cgroup_hierarchies() {
                let cg = hierarchy.join(CRI_NS).join(id);
                if cg.exists() {
                    left.push(format!("cgroup {}", cg.display()));
                }
            }
        }
        for (key, value) in &self.sysctls {
            let now = fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap_or_default();
            if now.trim() != value {
                left.push(format!("sysctl {key} = {} (was {value})", now.trim()));
            }
        }
        if let Ok(links) = fs::read_dir("/var/log/containers") {
            for link in links.flatten().filter(|l| fs::read_link(l.path()).is_ok_and(|t| t.starts_with(&self.dir))) {
                left.push(format!("log link {}", link.path().display()));
            }
        }
        for d in self.made_dirs.iter().chain([&self.dir]).filter(|d| d.exists()) {
            left.push(format!("directory {}", d.display()));
        }
        left
    }
}

/// One real node at a time in a test process: nodes share machine-wide
/// directories (containerd's shim sockets, the kubelet's log links) that
/// each removes when it made them, and two cores run one node well.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test control plane with one real node.
pub struct NodeCluster {
    // Torn down in this order: the node, the control plane, the network.
    pub node: RealNode,
    cp: Option<ControlPlane>,
    net: NodeNet,
    dir: Option<tempfile::TempDir>,
    down: bool,
    _one_node: tokio::sync::MutexGuard<'static, ()>,
}

impl NodeCluster {
    pub async fn start() -> anyhow::Result<Self> {
        let one_node = ONE_NODE.lock().await;
        let net = NodeNet::create()?;
        let dir = tempfile::Builder::new().prefix("tessera-node-").tempdir()?;
        let cp = match ControlPlane::start_with(Options { address: Some(net.host_ip), controllers: true }).await {
            Ok(cp) => cp,
            Err(e) => {
                net.remove();
                return Err(e);
            }
        };
        let node = match RealNode::start(&cp, &net, &dir.path().join("node")) {
            Ok(node) => node,
            Err(e) => {
                drop(cp);
                net.remove();
                return Err(e);
            }
        };
        let mut cluster = Self { node, cp: Some(cp), net, dir: Some(dir), down: false, _one_node: one_node };
        let cp = cluster.cp.as_ref().expect("started");
        publish_dns(cp, &cluster.net).await?;
        cluster.node.wait_ready(cp).await?;
        cluster.node.wait_services().await?;
        Ok(cluster)
    }

    pub fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("the control plane runs until shutdown")
    }

    pub fn net(&self) -> &NodeNet {
        &self.net
    }

    /// Takes the node, the control plane and the network down, then fails
    /// naming anything of the run that is left behind.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.teardown();
        let mut left = self.node.leftovers();
        left.extend(self.net.leftovers());
        if !left.is_empty() {
            bail!("left behind after shutdown:\n  {}", left.join("\n  "));
        }
        Ok(())
    }

    fn teardown(&mut self) {
        if std::mem::replace(&mut self.down, true) {
            return;
        }
        self.node.stop();
        drop(self.cp.take());
        self.net.remove();
        drop(self.dir.take());
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Chunkservers standing in for other machines, so that erasure-coded
/// filesets have the failure domains one real node cannot give: kwok nodes
/// `cs-<i>` (zone `zone-<i % 3>`, rack `rack-<i>`), each with a
/// `tessera chunkserver` process behind it. The processes run in the real
/// node's network namespace and listen on the node's address, so pods, the
/// node plugin and the master reach them as they would another machine's
/// chunkserver; the operator takes their domains from the kwok Nodes, as
/// it does for any node. See docs/decisions/0020-failure-domains-on-one-node.md.
pub struct ChunkserverNodes {
    /// The kwok nodes' names, in order.
    pub names: Vec<String>,
    /// Their chunkservers, in the same order.
    pub servers: Vec<Proc>,
    _kwok: crate::Kwok,
    _dir: tempfile::TempDir,
}

impl NodeCluster {
    /// Labels the real node `zone-0` / `rack-0` and starts `count` kwok
    /// nodes with chunkservers registering with `master` (an address the
    /// node's namespace reaches, e.g. the master Service's cluster IP).
    /// With eight, RS(6,3) has nine servers in three zones of three.
    pub async fn start_chunkserver_nodes(&self, count: usize, master: &str) -> anyhow::Result<ChunkserverNodes> {
        let cp = self.cp();
        let nodes: Api<Node> = Api::all(cp.client());
        let labels = serde_json::json!({"metadata": {"labels": {
            "topology.kubernetes.io/region": "test",
            "topology.kubernetes.io/zone": "zone-0",
            (tessera_api::keys::RACK_LABEL): "rack-0",
        }}});
        nodes
            .patch(&self.node.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&labels))
            .await
            .context("labelling the real node's failure domains")?;
        let kwok = cp.start_kwok()?;
        let dir = tempfile::Builder::new().prefix("tessera-cs-nodes-").tempdir()?;
        let names: Vec<String> = (1..=count).map(|i| format!("cs-{i}")).collect();
        for (i, name) in (1..).zip(&names) {
            let node = crate::fake_node(name, &format!("zone-{}", i % 3), &format!("rack-{i}"));
            nodes.create(&PostParams::default(), &node).await.with_context(|| format!("creating node {name}"))?;
        }
        let mut servers = Vec::new();
        for name in &names {
            // No topology flags: the operator takes zone and rack from the Node.
            let args: Vec<String> = vec![
                "chunkserver".into(),
                format!("--node-id={name}"),
                format!("--listen={}:0", self.net.node_ip),
                format!("--metrics-listen={}:0", self.net.node_ip),
                format!("--data-dir={}", dir.path().join(name).display()),
                format!("--master={master}"),
            ];
            let (nsenter, argv) = self.net.enter(&crate::tessera_bin("tessera"), &args);
            servers.push(Proc::spawn(name, &nsenter, &argv, dir.path())?);
        }
        Ok(ChunkserverNodes { names, servers, _kwok: kwok, _dir: dir })
    }
}

/// The `kube-dns` Service in `kube-system`, with the node's CoreDNS as its
/// one endpoint, as a cluster's DNS add-on would have it.
async fn publish_dns(cp: &ControlPlane, net: &NodeNet) -> anyhow::Result<()> {
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {
            "clusterIP": DNS_IP,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    }))?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kube-dns-node",
            "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "tessera-e2e"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [net.node_ip.to_string()], "conditions": {"ready": true}, "nodeName": NODE}],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
    }))?;
    let pp = PostParams::default();
    Api::<Service>::namespaced(cp.client(), "kube-system").create(&pp, &service).await.context("creating kube-dns")?;
    Api::<EndpointSlice>::namespaced(cp.client(), "kube-system")
        .create(&pp, &slice)
        .await
        .context("creating its endpoints")?;
    Ok(())
}

/// Whether `GET path` on `addr` answers 200 (a health endpoint).
fn http_ok(addr: SocketAddrV4, path: &str) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

fn node_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn containerd_config(dir: &Path, socket: &Path, cni_conf: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
# Plugins of other platforms and snapshotters this test never uses.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The test machine lacks CAP_SYS_RESOURCE: a sandbox asking for a
  # negative OOM score would die in runc.
  restrict_oom_score_adj = true
  # No AppArmor parser here.
  disable_apparmor = true
  # Pod network namespaces are bind-mounted under the state directory,
  # so they go with it.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{d}/runc"
    SystemdCgroup = false
"#,
        socket = socket.display(),
        cni_conf = cni_conf.display(),
    )
}

fn cni_config(pod_cidr: &str, ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "tessera-e2e",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            },
        }],
    }))
    .expect("JSON")
}

fn kubelet_config(dir: &Path, socket: &Path, node_ip: Ipv4Addr, ca: &Path, resolv: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
# No systemd and cgroup v1 here: the kubelet manages cgroups by path, keeps
# pods directly under the runtime's cgroup, and reserves nothing.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
# Imported images cannot be pulled again: never collect them, never evict.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{}}
address: {node_ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/volume-plugins
resolvConf: {resolv}
serializeImagePulls: false
clusterDNS: [{DNS_IP}]
clusterDomain: cluster.local
"#,
        socket = socket.display(),
        ca = ca.display(),
        d = dir.display(),
        resolv = resolv.display(),
    )
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found on PATH"))
}

fn netns_list() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// `tessera-node-<index>-<pid>` → (index, pid).
fn parse_netns(name: &str) -> Option<(u8, u32)> {
    let rest = name.strip_prefix("tessera-node-")?;
    let (index, pid) = rest.split_once('-')?;
    Some((index.parse().ok()?, pid.parse().ok()?))
}

/// Namespaces of runs whose process is gone (killed before cleaning up).
fn remove_stale_namespaces() {
    for name in netns_list() {
        if let Some((_, pid)) = parse_netns(&name)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            remove_namespace(&name);
        }
    }
}

/// Kills what still runs in the namespace, then deletes it.
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Processes whose command line names a path under `dir` (containerd's
/// shims name its socket).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|arg| arg.contains(&needle)))
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut rest = p;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Unmounts everything under `dir`, deepest first; a mount stacked on
/// another is taken off as many times as it takes.
fn unmount_under(dir: &Path) {
    for _ in 0..8 {
        let points = mounts_under(dir);
        if points.is_empty() {
            return;
        }
        for p in points {
            let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The kubelet links each container's log into /var/log/containers.
fn remove_container_log_links(dir: &Path) {
    let Ok(entries) = fs::read_dir("/var/log/containers") else { return };
    for e in entries.flatten() {
        if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Every mounted cgroup hierarchy, v1 and v2.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (_, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            if fstype == "cgroup" || fstype == "cgroup2" { line.split(' ').nth(4).map(PathBuf::from) } else { None }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_give_index_and_owner() {
        assert_eq!(parse_netns("tessera-node-7-1234"), Some((7, 1234)));
        assert_eq!(parse_netns("tessera-node-x-1"), None);
        assert_eq!(parse_netns("cni-1234"), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b\011c"), "/tmp/a b\tc");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/odd\x"), r"/odd\x");
    }
}
