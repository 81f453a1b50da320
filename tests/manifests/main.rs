//! Offline checks of what `deploy/` installs and of the image recipe: no cluster and no container
//! runtime. Each overlay is rendered with the real `kubectl kustomize` (skipped, saying why, on a
//! machine without a kubectl that embeds kustomize v5), every object is checked against its typed
//! schema, and then the properties the manifests promise: the Role's exact grants, embedded
//! configs that the real `tidegate validate` accepts, hardened containers, probes and Services on
//! ports tidegate really listens on, grace periods that outlast the drain, the ingress tier's
//! disruption budget, spread and network policy, the sidecar patch, and monitoring rules that are
//! the ones in `config/prometheus/`.

mod forms;
mod image;
mod operator;
mod overlays;
mod pods;
#[path = "../common/rbac.rs"]
mod rbac;
mod render;
mod sources;
