//! Text forms of enums as stored in the database, and back; an unknown text is corruption.

use control_api::accounts::TokenRole;
use control_api::agents::{AgentOperation, PeriodState};
use control_api::audit::AuditAction;
use control_api::usage::ResourceKind;

use super::{Result, StoreError};

/// Text forms of enums as stored in the database.
pub(crate) trait DbText: Sized + Copy + 'static {
    const NAME: &'static str;
    const ALL: &'static [Self];
    fn as_db(self) -> &'static str;

    fn from_db(text: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_db() == text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown {} `{text}`", Self::NAME)))
    }
}

impl DbText for PeriodState {
    const NAME: &'static str = "period state";
    const ALL: &'static [Self] = &[Self::Running, Self::Paused];
    fn as_db(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
        }
    }
}

impl DbText for AgentOperation {
    const NAME: &'static str = "operation";
    const ALL: &'static [Self] = &[Self::Provision, Self::Start, Self::Stop, Self::Destroy];
    fn as_db(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Destroy => "destroy",
        }
    }
}

impl DbText for TokenRole {
    const NAME: &'static str = "token role";
    const ALL: &'static [Self] = &[Self::Operator, Self::Account];
    fn as_db(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Account => "account",
        }
    }
}

impl DbText for ResourceKind {
    const NAME: &'static str = "resource kind";
    const ALL: &'static [Self] = &[Self::Agent, Self::PlainVm];
    fn as_db(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::PlainVm => "plain_vm",
        }
    }
}

impl DbText for AuditAction {
    const NAME: &'static str = "audit action";
    const ALL: &'static [Self] = &[
        Self::AgentProvision,
        Self::AgentStart,
        Self::AgentStop,
        Self::AgentDestroy,
        Self::AgentTransfer,
        Self::AgentRebootstrap,
        Self::AgentClone,
        Self::PlainVmDestroy,
        Self::PlainVmTransfer,
    ];
    fn as_db(self) -> &'static str {
        match self {
            Self::AgentProvision => "agent.provision",
            Self::AgentStart => "agent.start",
            Self::AgentStop => "agent.stop",
            Self::AgentDestroy => "agent.destroy",
            Self::AgentTransfer => "agent.transfer",
            Self::AgentRebootstrap => "agent.rebootstrap",
            Self::AgentClone => "agent.clone",
            Self::PlainVmDestroy => "plain_vm.destroy",
            Self::PlainVmTransfer => "plain_vm.transfer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: DbText + PartialEq + std::fmt::Debug>() {
        for &value in T::ALL {
            assert_eq!(T::from_db(value.as_db()).unwrap(), value);
        }
        assert!(matches!(
            T::from_db("nonsense"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn every_stored_text_reads_back_and_nothing_else_does() {
        round_trips::<PeriodState>();
        round_trips::<AgentOperation>();
        round_trips::<TokenRole>();
        round_trips::<ResourceKind>();
        round_trips::<AuditAction>();
        assert_eq!(ResourceKind::PlainVm.as_db(), "plain_vm");
        assert_eq!(AuditAction::AgentRebootstrap.as_db(), "agent.rebootstrap");
    }
}
