//! SecurityGroups end to end in one process (API server, controllers, a simulated agent): a
//! VM NIC's groups are resolved into its VirtualMachineInstance, a rule change reaches the
//! instance, and a missing group blocks the VM with `SecurityGroupNotFound`.

use std::time::Duration;

use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use serde_json::json;
use strata_apis::{
    securitygroup::{Protocol, RuleAction},
    PortRange, RunStrategy, SecurityGroup, SecurityGroupRule, SecurityGroupSpec, VirtualMachine,
    VirtualMachineInstance, VirtualMachineSpec, VmNic, VmPhase, VmiNicSecurity,
};

mod common;

use common::*;

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
