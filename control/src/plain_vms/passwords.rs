//! The one-time password's hash on its way from the request that showed the password to the
//! job that makes the server: in this replica's memory only, never in the database (control
//! stores neither the password nor its hash). A job that finds no hash here when its VM asked
//! for a password waits for the replica that holds it, or, if that replica is gone, fails
//! without making a server the caller could not log in to as told.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::providers::Secret;
use crate::sync;

/// Hashes by Plain VM id, until the server that receives one is made.
#[derive(Debug, Default)]
pub struct Passwords(Mutex<HashMap<String, Secret>>);

impl Passwords {
    pub fn keep(&self, vm_id: &str, hash: Secret) {
        sync::lock(&self.0).insert(vm_id.to_owned(), hash);
    }

    pub fn get(&self, vm_id: &str) -> Option<Secret> {
        sync::lock(&self.0).get(vm_id).cloned()
    }

    /// Forgets the hash: its server exists, or never will.
    pub fn forget(&self, vm_id: &str) {
        sync::lock(&self.0).remove(vm_id);
    }
}
