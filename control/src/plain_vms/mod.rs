//! Plain VMs: a Hetzner server with public IPv4 and IPv6, its own firewall and a one-shot
//! cloud-init, and no agent of ours, ever (DESIGN.md, "Plain VMs"). Being built: so far, the
//! check of the inbound ruleset `PUT /api/plain-vms/{id}/firewall` will take ([`firewall`]);
//! the first-boot document is `cloud_init::plain_vm_document`.

pub mod firewall;
