//! SecurityGroups end to end in one process (API server, controllers, a simulated agent): a
//! VM NIC's groups are resolved into its VirtualMachineInstance, a rule change reaches the
//! instance, and a missing group blocks the VM with `SecurityGroupNotFound`.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    Api, Client, Resource, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::READY,
    securitygroup::{Protocol, RuleAction},
    Cluster, ClusterSpec, Host, HostCapacity, Image, ImageSpec, InstanceOffering,
    InstanceOfferingSpec, IpRange, L2Network, L2NetworkSpec, L3Network, L3NetworkSpec, PortRange,
    RunStrategy, SecurityGroup, SecurityGroupRule, SecurityGroupSpec, VirtualMachine,
    VirtualMachineInstance, VirtualMachineSpec, VmNic, VmPhase, VmiNicSecurity, Zone, ZoneSpec,
};
use strata_controllers::ControllerOptions;
use strata_node_agent::{Agent, AgentConfig, SimDriver};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

const NS: &str = "it-security-groups";
const DEADLINE: Duration = Duration::from_secs(60);

struct Plane {
    client: Client,
    _drivers: Vec<Arc<SimDriver>>,
    tasks: Vec<JoinHandle<()>>,
    _stop_server: oneshot::Sender<()>,
    _data: tempfile::TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn capacity(cpu: i64, memory: &str) -> HostCapacity {
    HostCapacity {
        cpu,
        memory: Quantity(memory.into()),
    }
}

async fn start(hosts: &[&str], heartbeat: Duration) -> Plane {
    let data = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let opts = strata_apiserver::ServeOptions {
        data_dir: data.path().to_path_buf(),
        store: strata_apiserver::StoreConfig::Embedded,
        bearer_token: None,
        crds: strata_apis::crds(),
    };
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = strata_apiserver::serve(opts, listener, shutdown).await {
            panic!("api server failed: {error}");
        }
    });
    let url = format!("http://127.0.0.1:{port}").parse().expect("url");
    let client = Client::try_from(kube::Config::new(url)).expect("client");
    wait_for(&client, "the API server to serve CRDs", || async {
        Api::<VirtualMachine>::all(client.clone())
            .list(&ListParams::default())
            .await
            .ok()
    })
    .await;

    let mut tasks = vec![server];
    let controllers = client.clone();
    tasks.push(tokio::spawn(async move {
        strata_controllers::run(controllers, ControllerOptions::default())
            .await
            .expect("controllers run");
    }));
    let mut drivers = Vec::new();
    for host in hosts {
        let cap = capacity(4, "4Gi");
        let driver = Arc::new(SimDriver::new(&cap).expect("capacity"));
        drivers.push(driver.clone());
        let config = AgentConfig {
            heartbeat_interval: heartbeat,
            ..AgentConfig::new(*host, "cluster-1", cap)
        };
        let agent = Agent::new(client.clone(), config, driver);
        tasks.push(tokio::spawn(async move {
            agent.run().await.expect("agent runs");
        }));
    }
    Plane {
        client,
        _drivers: drivers,
        tasks,
        _stop_server: stop_server,
        _data: data,
    }
}

/// Polls `check` until it returns a value, failing with a dump of every VM at the deadline.
async fn wait_for<T, F, Fut>(client: &Client, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            let vms = Api::<VirtualMachine>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .map(|vm| (vm.name_any(), vm.status))
                        .collect::<Vec<_>>()
                });
            let hosts = Api::<Host>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .map(|h| (h.name_any(), h.status))
                        .collect::<Vec<_>>()
                });
            panic!("timed out waiting for {what}\nVMs: {vms:#?}\nHosts: {hosts:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create<K>(api: &Api<K>, object: K) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
}

async fn inventory(client: &Client) {
    create(
        &Api::all(client.clone()),
        Namespace {
            metadata: ObjectMeta {
                name: Some(NS.into()),
                labels: Some([("strata.io/test".to_string(), "integration".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        },
    )
    .await;
    create(
        &Api::all(client.clone()),
        Zone::new("zone-1", ZoneSpec::default()),
    )
    .await;
    // The scheduler places VMs only where the cluster reaches their L2 and has storage.
    let storage = strata_apis::PrimaryStorageSpec {
        zone: "zone-1".into(),
        url: "/var/lib/strata/volumes".into(),
        ..strata_apis::PrimaryStorageSpec::default()
    };
    create(
        &Api::all(client.clone()),
        strata_apis::PrimaryStorage::new("ps-1", storage),
    )
    .await;
    let cluster = ClusterSpec {
        zone: "zone-1".into(),
        l2_networks: vec!["l2-1".into()],
        primary_storages: vec!["ps-1".into()],
        ..ClusterSpec::default()
    };
    create(
        &Api::all(client.clone()),
        Cluster::new("cluster-1", cluster),
    )
    .await;
    let offerings: Api<InstanceOffering> = Api::all(client.clone());
    for (name, memory) in [("small", "1Gi"), ("huge", "64Gi")] {
        let spec = InstanceOfferingSpec {
            cpu: 1,
            memory: Quantity(memory.into()),
            ..InstanceOfferingSpec::default()
        };
        create(&offerings, InstanceOffering::new(name, spec)).await;
    }
    let image = ImageSpec {
        url: "file:///images/tiny.qcow2".into(),
        ..ImageSpec::default()
    };
    create(&Api::all(client.clone()), Image::new("tiny", image)).await;
    let l2 = L2NetworkSpec {
        zone: "zone-1".into(),
        physical_interface: Some("eth1".into()),
        ..L2NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L2Network::new("l2-1", l2)).await;
    let net = L3NetworkSpec {
        l2_network: "l2-1".into(),
        cidr: "10.10.0.0/24".into(),
        gateway: "10.10.0.1".into(),
        ip_ranges: vec![IpRange {
            start: "10.10.0.10".into(),
            end: "10.10.0.250".into(),
        }],
        ..L3NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L3Network::new("net-1", net)).await;
}

async fn wait_phase(client: &Client, name: &str, phase: VmPhase) -> VirtualMachine {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    wait_for(client, &format!("{name} to be {phase:?}"), || async {
        let vm = vms.get_opt(name).await.ok()??;
        (vm.status.as_ref()?.phase == phase).then_some(vm)
    })
    .await
}

fn ready_reason(vm: &VirtualMachine) -> (String, String) {
    vm.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

async fn wait_pending_with(client: &Client, name: &str, reason: &str) -> String {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    wait_for(
        client,
        &format!("{name} to be Created with {reason}"),
        || async {
            let vm = vms.get_opt(name).await.ok()??;
            let (got, message) = ready_reason(&vm);
            (vm.status.as_ref()?.phase == VmPhase::Created && got == reason).then_some(message)
        },
    )
    .await
}

fn vm(name: &str, groups: &[&str]) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "tiny".into(),
            nics: vec![VmNic {
                l3_network: "net-1".into(),
                security_groups: groups.iter().map(|g| g.to_string()).collect(),
                ..VmNic::default()
            }],
            run_strategy: RunStrategy::Always,
            ..VirtualMachineSpec::default()
        },
    )
}

fn ssh_from(cidr: &str) -> SecurityGroupRule {
    SecurityGroupRule {
        protocol: Protocol::TCP,
        ports: Some(PortRange { start: 22, end: 22 }),
        cidr: Some(cidr.into()),
        remote_group: None,
        priority: 100,
        action: RuleAction::Accept,
        description: Some("ssh".into()),
    }
}

/// Waits until the VMI of `name` has a first NIC whose security satisfies `check`.
async fn wait_vmi_security(
    client: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&VmiNicSecurity) -> bool,
) -> VmiNicSecurity {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), NS);
    wait_for(client, what, || async {
        let vmi = vmis.get_opt(name).await.ok()??;
        let sec = vmi.spec.nics.first()?.security.clone()?;
        check(&sec).then_some(sec)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_are_resolved_into_instances_and_follow_rule_changes() {
    let plane = start(&["host-a", "host-b"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let groups: Api<SecurityGroup> = Api::namespaced(client.clone(), NS);
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);

    let web = SecurityGroupSpec {
        ingress_rules: vec![ssh_from("10.0.0.0/8")],
        default_ingress_policy: RuleAction::Drop,
        default_egress_policy: RuleAction::Accept,
        ..SecurityGroupSpec::default()
    };
    create(&groups, SecurityGroup::new("web", web)).await;
    // A group whose rules name `web` as the remote group: its rule lists web's members.
    let db = SecurityGroupSpec {
        ingress_rules: vec![SecurityGroupRule {
            protocol: Protocol::TCP,
            ports: Some(PortRange {
                start: 5432,
                end: 5432,
            }),
            cidr: None,
            remote_group: Some("web".into()),
            priority: 10,
            action: RuleAction::Accept,
            description: None,
        }],
        ..SecurityGroupSpec::default()
    };
    create(&groups, SecurityGroup::new("db", db)).await;
    create(&vms, vm("vm-web", &["web"])).await;
    create(&vms, vm("vm-lost", &["web", "no-such-group"])).await;

    // The VM runs with the group's rules in its instance.
    let running = wait_phase(&client, "vm-web", VmPhase::Running).await;
    let web_ip = running.status.expect("status").nics[0].ip.clone();
    let sec = wait_vmi_security(&client, "vm-web", "vm-web's rules", |_| true).await;
    assert_eq!(sec.groups, ["web"]);
    assert_eq!(sec.ingress_rules.len(), 1, "{sec:?}");
    let rule = &sec.ingress_rules[0];
    assert_eq!(rule.protocol, Protocol::TCP);
    assert_eq!(rule.ports, Some(PortRange { start: 22, end: 22 }));
    assert_eq!(rule.cidr.as_deref(), Some("10.0.0.0/8"));
    assert_eq!(rule.action, RuleAction::Accept);
    assert_eq!(sec.default_ingress_policy, RuleAction::Drop);
    assert_eq!(sec.default_egress_policy, RuleAction::Accept);

    // Editing the group's rules reaches the instance.
    let patch = json!({ "spec": {
        "ingressRules": [
            { "protocol": "TCP", "ports": { "start": 22, "end": 22 }, "cidr": "192.168.0.0/16",
              "priority": 50, "action": "Accept" },
            { "protocol": "ICMP", "priority": 60, "action": "Accept" }
        ],
        "defaultEgressPolicy": "Drop"
    }});
    groups
        .patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch web");
    let sec = wait_vmi_security(&client, "vm-web", "vm-web's edited rules", |s| {
        s.ingress_rules.len() == 2
    })
    .await;
    assert_eq!(sec.ingress_rules[0].cidr.as_deref(), Some("192.168.0.0/16"));
    assert_eq!(sec.ingress_rules[0].priority, 50);
    assert_eq!(sec.ingress_rules[1].protocol, Protocol::ICMP);
    assert_eq!(sec.ingress_rules[1].cidr, None);
    assert_eq!(sec.default_egress_policy, RuleAction::Drop);

    // A remote group resolves to the addresses of its member NICs.
    create(&vms, vm("vm-db", &["db"])).await;
    let sec = wait_vmi_security(&client, "vm-db", "vm-db's rules", |_| true).await;
    assert_eq!(sec.ingress_rules.len(), 1, "{sec:?}");
    assert_eq!(
        sec.ingress_rules[0].cidr.as_deref(),
        Some(format!("{web_ip}/32").as_str())
    );

    // The group counts its addressed NICs; a new member reaches the rules naming the group.
    wait_for(&client, "web to count its NIC", || async {
        let sg = groups.get("web").await.ok()?;
        (sg.status?.nic_count == Some(1)).then_some(())
    })
    .await;
    create(&vms, vm("vm-web-2", &["web"])).await;
    let running = wait_phase(&client, "vm-web-2", VmPhase::Running).await;
    let web_ip_2 = running.status.expect("status").nics[0].ip.clone();
    let sec = wait_vmi_security(
        &client,
        "vm-db",
        "vm-db's rules with both web members",
        |s| s.ingress_rules.len() == 2,
    )
    .await;
    let mut cidrs: Vec<String> = sec
        .ingress_rules
        .iter()
        .filter_map(|r| r.cidr.clone())
        .collect();
    cidrs.sort();
    let mut expected = vec![format!("{web_ip}/32"), format!("{web_ip_2}/32")];
    expected.sort();
    assert_eq!(cidrs, expected);
    let sg = groups.get("web").await.expect("get web");
    assert_eq!(sg.status.and_then(|s| s.nic_count), Some(2));

    // A missing group blocks the VM, naming the group; creating it unblocks the VM.
    let message = wait_pending_with(&client, "vm-lost", "SecurityGroupNotFound").await;
    assert!(message.contains("no-such-group"), "{message}");
    assert!(
        Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
            .get_opt("vm-lost")
            .await
            .expect("get")
            .is_none(),
        "a blocked VM has no instance"
    );
    create(
        &groups,
        SecurityGroup::new("no-such-group", SecurityGroupSpec::default()),
    )
    .await;
    let sec = wait_vmi_security(&client, "vm-lost", "vm-lost's rules", |_| true).await;
    assert_eq!(sec.groups, ["web", "no-such-group"]);
}
