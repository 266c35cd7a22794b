"""The official Python `kubernetes` client's dynamic client against Strata.

Run by e2e/tests/python_client.rs with the kubeconfig `strata up` wrote; prints one `ok <step>`
line per step and exits non-zero on the first failure. It exercises what watch-based automation
written in Python does: discovery, create, get, list by label, watch until a phase, merge patch,
server-side apply, optimistic concurrency, delete.
"""

import sys

from kubernetes import config, dynamic
from kubernetes.client import api_client
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError


def ok(step):
    print(f"ok {step}", flush=True)


def main(kubeconfig):
    client = dynamic.DynamicClient(
        api_client.ApiClient(configuration=config.load_kube_config(config_file=kubeconfig))
    )
    vms = client.resources.get(api_version="strata.io/v1alpha1", kind="VirtualMachine")
    assert vms.namespaced and "vm" in vms.short_names, vms.short_names
    ok("discovery")

    body = {
        "apiVersion": "strata.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "py-vm", "labels": {"made-by": "python"}},
        "spec": {
            "instanceOffering": "small",
            "image": "tiny",
            "nics": [{"l3Network": "flat-1"}],
        },
    }
    created = vms.create(body=body, namespace="default")
    assert created.metadata.uid, created
    ok("create")

    listed = vms.get(namespace="default", label_selector="made-by=python")
    assert [item.metadata.name for item in listed.items] == ["py-vm"], listed
    ok("list by label")

    phase = None
    for event in vms.watch(
        namespace="default",
        field_selector="metadata.name=py-vm",
        resource_version=listed.metadata.resourceVersion,
        timeout=60,
    ):
        phase = (event["object"].status or {}).get("phase")
        if phase == "Running":
            break
    assert phase == "Running", phase
    ok("watch until Running")

    patched = vms.patch(
        name="py-vm",
        namespace="default",
        body={"metadata": {"labels": {"tier": "batch"}}},
        content_type="application/merge-patch+json",
    )
    assert patched.metadata.labels["tier"] == "batch", patched.metadata.labels
    ok("merge patch")

    applied = vms.server_side_apply(
        body={
            "apiVersion": "strata.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "py-vm", "annotations": {"note": "from python"}},
        },
        namespace="default",
        field_manager="python-automation",
    )
    managers = [m.manager for m in applied.metadata.managedFields]
    assert "python-automation" in managers, managers
    ok("server-side apply")

    stale = vms.get(name="py-vm", namespace="default").to_dict()
    vms.patch(
        name="py-vm",
        namespace="default",
        body={"metadata": {"labels": {"tier": "web"}}},
        content_type="application/merge-patch+json",
    )
    try:
        vms.replace(body=stale, namespace="default")
        raise AssertionError("a replace with a stale resourceVersion was accepted")
    except ConflictError:
        ok("conflict on stale write")

    vms.delete(name="py-vm", namespace="default")
    for event in vms.watch(
        namespace="default", field_selector="metadata.name=py-vm", timeout=60
    ):
        if event["type"] == "DELETED":
            break
    try:
        vms.get(name="py-vm", namespace="default")
        raise AssertionError("py-vm still exists after its deletion was watched")
    except NotFoundError:
        ok("delete")


if __name__ == "__main__":
    main(sys.argv[1])
