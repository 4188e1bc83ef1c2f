//! The Pod Security Standards' `restricted` profile as a check over a pod spec, so tests
//! (builders, rendered manifests) can show that stowage's pods are admitted in
//! namespaces that enforce it. Follows the profile's controls of Kubernetes 1.30+.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

/// Every way `spec` breaks the `restricted` profile (empty: it passes).
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        v.push("host namespaces are not allowed".into());
    }
    for vol in spec.volumes.iter().flatten() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!("volume {} has a type restricted forbids", vol.name));
        }
    }
    let pod_seccomp = pod.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        check_container(c, &pod, pod_seccomp, &mut v);
    }
    if pod.run_as_user == Some(0) {
        v.push("pod runAsUser 0 is not allowed".into());
    }
    v
}

fn check_container(
    c: &Container,
    pod: &k8s_openapi::api::core::v1::PodSecurityContext,
    pod_seccomp: Option<&str>,
    v: &mut Vec<String>,
) {
    let sc: SecurityContext = c.security_context.clone().unwrap_or_default();
    let name = &c.name;
    if sc.privileged == Some(true) {
        v.push(format!("container {name} is privileged"));
    }
    if sc.allow_privilege_escalation != Some(false) {
        v.push(format!(
            "container {name} must set allowPrivilegeEscalation=false"
        ));
    }
    let non_root = sc.run_as_non_root.or(pod.run_as_non_root);
    if non_root != Some(true) {
        v.push(format!("container {name} must run with runAsNonRoot=true"));
    }
    if sc.run_as_user == Some(0) {
        v.push(format!("container {name} runAsUser 0 is not allowed"));
    }
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .map(|s| s.type_.as_str())
        .or(pod_seccomp);
    if !matches!(seccomp, Some("RuntimeDefault") | Some("Localhost")) {
        v.push(format!(
            "container {name} must use seccompProfile RuntimeDefault or Localhost"
        ));
    }
    let caps = sc.capabilities.unwrap_or_default();
    if !caps.drop.iter().flatten().any(|d| d == "ALL") {
        v.push(format!("container {name} must drop ALL capabilities"));
    }
    for add in caps.add.iter().flatten() {
        if add != "NET_BIND_SERVICE" {
            v.push(format!("container {name} adds capability {add}"));
        }
    }
    for p in c.ports.iter().flatten() {
        if p.host_port.is_some_and(|h| h != 0) {
            v.push(format!("container {name} uses a host port"));
        }
    }
}
