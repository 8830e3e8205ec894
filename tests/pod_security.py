"""The Kubernetes Pod Security Standards, "baseline" and "restricted" profiles, as a
check over a pod spec (a Pod's `spec`, or a pod template's).

Implemented from the standard's own tables (kubernetes.io/docs/concepts/security/
pod-security-standards, the version with "Host Probes / Lifecycle Hooks (v1.34+)"):
"restricted" is everything from "baseline" plus its own controls. Each function below
is one control and returns the violations it finds, each naming the field and the
allowed values; `restricted_violations` runs them all. The optional "non-root groups"
control of older versions of the page is checked too (Pod Security Admission does not
enforce it; these manifests meet it anyway).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

# Baseline "Capabilities": what may be added at all.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
# Restricted "Capabilities": drop ALL, add back at most this.
RESTRICTED_ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}
# Restricted "Volume Types": every volume must be one of these.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
PROFILE_TYPES = {"RuntimeDefault", "Localhost"}  # allowed seccomp and AppArmor profile types
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def containers(spec: dict) -> Iterator[tuple[str, dict]]:
    """(field path, container) for every container, init container and ephemeral container."""
    for field in CONTAINER_LISTS:
        for i, c in enumerate(spec.get(field) or []):
            yield f"spec.{field}[{i}]({c.get('name', '?')})", c


def _ctx(container: dict) -> dict:
    return container.get("securityContext") or {}


def _linux(spec: dict) -> bool:
    """Privilege escalation, seccomp and capabilities apply unless spec.os.name is windows."""
    return (spec.get("os") or {}).get("name") != "windows"


# ---------------------------------------------------------------- baseline


def host_process(spec: dict, metadata: dict) -> list[str]:
    found = []
    if ((spec.get("securityContext") or {}).get("windowsOptions") or {}).get("hostProcess"):
        found.append("spec.securityContext.windowsOptions.hostProcess: must be false or unset")
    for where, c in containers(spec):
        if (_ctx(c).get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}.securityContext.windowsOptions.hostProcess: must be false or unset")
    return found


def host_namespaces(spec: dict, metadata: dict) -> list[str]:
    return [f"spec.{field}: must be false or unset" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]


def privileged(spec: dict, metadata: dict) -> list[str]:
    return [f"{where}.securityContext.privileged: must be false or unset" for where, c in containers(spec)
            if _ctx(c).get("privileged")]


def baseline_capabilities(spec: dict, metadata: dict) -> list[str]:
    found = []
    for where, c in containers(spec):
        extra = set((_ctx(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if extra:
            found.append(f"{where}.securityContext.capabilities.add: {sorted(extra)} beyond the baseline set")
    return found


def host_path_volumes(spec: dict, metadata: dict) -> list[str]:
    return [f"spec.volumes[{i}]({v.get('name')}).hostPath: forbidden" for i, v in enumerate(spec.get("volumes") or [])
            if "hostPath" in v]


def host_ports(spec: dict, metadata: dict) -> list[str]:
    return [f"{where}.ports[{i}].hostPort: must be 0 or unset" for where, c in containers(spec)
            for i, p in enumerate(c.get("ports") or []) if p.get("hostPort")]


def host_probes_and_hooks(spec: dict, metadata: dict) -> list[str]:
    found = []
    for where, c in containers(spec):
        handlers = {name: c.get(name) for name in ("livenessProbe", "readinessProbe", "startupProbe")}
        handlers.update({f"lifecycle.{name}": (c.get("lifecycle") or {}).get(name) for name in ("postStart", "preStop")})
        for name, handler in handlers.items():
            for action in ("httpGet", "tcpSocket"):
                if ((handler or {}).get(action) or {}).get("host"):
                    found.append(f"{where}.{name}.{action}.host: must be empty or unset")
    return found


def app_armor(spec: dict, metadata: dict) -> list[str]:
    found = []
    profiles = [("spec.securityContext", spec.get("securityContext") or {})]
    profiles += [(f"{where}.securityContext", _ctx(c)) for where, c in containers(spec)]
    for where, ctx in profiles:
        kind = (ctx.get("appArmorProfile") or {}).get("type")
        if kind is not None and kind not in PROFILE_TYPES:
            found.append(f"{where}.appArmorProfile.type: {kind!r}, allowed {sorted(PROFILE_TYPES)} or unset")
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            found.append(f"metadata.annotations[{key}]: {value!r}, allowed runtime/default or localhost/*")
    return found


def se_linux(spec: dict, metadata: dict) -> list[str]:
    found = []
    contexts = [("spec.securityContext", spec.get("securityContext") or {})]
    contexts += [(f"{where}.securityContext", _ctx(c)) for where, c in containers(spec)]
    for where, ctx in contexts:
        options = ctx.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            found.append(f"{where}.seLinuxOptions.type: {options['type']!r}, allowed {sorted(SELINUX_TYPES)}")
        for field in ("user", "role"):
            if options.get(field):
                found.append(f"{where}.seLinuxOptions.{field}: must be empty or unset")
    return found


def proc_mount(spec: dict, metadata: dict) -> list[str]:
    return [f"{where}.securityContext.procMount: {_ctx(c)['procMount']!r}, allowed Default or unset"
            for where, c in containers(spec) if _ctx(c).get("procMount", "Default") != "Default"]


def baseline_seccomp(spec: dict, metadata: dict) -> list[str]:
    found = []
    contexts = [("spec.securityContext", spec.get("securityContext") or {})]
    contexts += [(f"{where}.securityContext", _ctx(c)) for where, c in containers(spec)]
    for where, ctx in contexts:
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"{where}.seccompProfile.type: Unconfined is forbidden")
    return found


def sysctls(spec: dict, metadata: dict) -> list[str]:
    return [f"spec.securityContext.sysctls: {s.get('name')!r} is not a safe sysctl"
            for s in (spec.get("securityContext") or {}).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]


# ---------------------------------------------------------------- restricted


def volume_types(spec: dict, metadata: dict) -> list[str]:
    found = []
    for i, volume in enumerate(spec.get("volumes") or []):
        kinds = set(volume) - {"name"}
        if not kinds & RESTRICTED_VOLUME_TYPES or kinds - RESTRICTED_VOLUME_TYPES:
            found.append(f"spec.volumes[{i}]({volume.get('name')}): type {sorted(kinds)}, "
                         f"allowed {sorted(RESTRICTED_VOLUME_TYPES)}")
    return found


def privilege_escalation(spec: dict, metadata: dict) -> list[str]:
    if not _linux(spec):
        return []
    return [f"{where}.securityContext.allowPrivilegeEscalation: must be false" for where, c in containers(spec)
            if _ctx(c).get("allowPrivilegeEscalation") is not False]


def run_as_non_root(spec: dict, metadata: dict) -> list[str]:
    pod_level = (spec.get("securityContext") or {}).get("runAsNonRoot")
    found = []
    if pod_level is False:
        found.append("spec.securityContext.runAsNonRoot: must be true")
    for where, c in containers(spec):
        value = _ctx(c).get("runAsNonRoot")
        if value is False or (value is None and pod_level is not True):
            found.append(f"{where}.securityContext.runAsNonRoot: must be true (here or at pod level)")
    return found


def run_as_user(spec: dict, metadata: dict) -> list[str]:
    found = []
    if (spec.get("securityContext") or {}).get("runAsUser") == 0:
        found.append("spec.securityContext.runAsUser: must not be 0")
    found += [f"{where}.securityContext.runAsUser: must not be 0" for where, c in containers(spec)
              if _ctx(c).get("runAsUser") == 0]
    return found


def restricted_seccomp(spec: dict, metadata: dict) -> list[str]:
    if not _linux(spec):
        return []
    pod_type = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    found = []
    if pod_type is not None and pod_type not in PROFILE_TYPES:
        found.append(f"spec.securityContext.seccompProfile.type: {pod_type!r}, allowed {sorted(PROFILE_TYPES)}")
    for where, c in containers(spec):
        kind = (_ctx(c).get("seccompProfile") or {}).get("type")
        if kind is not None and kind not in PROFILE_TYPES:
            found.append(f"{where}.securityContext.seccompProfile.type: {kind!r}, allowed {sorted(PROFILE_TYPES)}")
        elif kind is None and pod_type is None:
            found.append(f"{where}: no seccompProfile, here or at pod level (RuntimeDefault or Localhost)")
    return found


def restricted_capabilities(spec: dict, metadata: dict) -> list[str]:
    if not _linux(spec):
        return []
    found = []
    for where, c in containers(spec):
        caps = _ctx(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where}.securityContext.capabilities.drop: must include ALL")
        extra = set(caps.get("add") or []) - RESTRICTED_ADDABLE_CAPABILITIES
        if extra:
            found.append(f"{where}.securityContext.capabilities.add: {sorted(extra)}, only NET_BIND_SERVICE allowed")
    return found


def non_root_groups(spec: dict, metadata: dict) -> list[str]:
    """Optional in the standard: no root primary or supplementary group."""
    pod = spec.get("securityContext") or {}
    found = [f"spec.securityContext.{field}: must not be 0" for field in ("runAsGroup", "fsGroup") if pod.get(field) == 0]
    if 0 in (pod.get("supplementalGroups") or []):
        found.append("spec.securityContext.supplementalGroups: must not contain 0")
    found += [f"{where}.securityContext.runAsGroup: must not be 0" for where, c in containers(spec)
              if _ctx(c).get("runAsGroup") == 0]
    return found


Control = Callable[[dict, dict], list[str]]
BASELINE: tuple[Control, ...] = (
    host_process, host_namespaces, privileged, baseline_capabilities, host_path_volumes, host_ports,
    host_probes_and_hooks, app_armor, se_linux, proc_mount, baseline_seccomp, sysctls,
)
RESTRICTED: tuple[Control, ...] = BASELINE + (
    volume_types, privilege_escalation, run_as_non_root, run_as_user, restricted_seccomp, restricted_capabilities,
    non_root_groups,
)


def restricted_violations(spec: dict, metadata: dict | None = None) -> list[str]:
    """Every violation of the restricted profile in a pod spec; [] when it passes."""
    return [v for control in RESTRICTED for v in control(spec, metadata or {})]
