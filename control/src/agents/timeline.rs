//! An Agent's state periods, as the dashboard draws them.

use control_api::Timestamp;
use control_api::agents::{StatePeriod, Timeline};

use super::visible_agent;
use crate::app::{App, Caller};
use crate::error::{Error, Result};
use crate::ledger::ResourceRef;

/// The Agent's state periods overlapping `[from, to)` (by default its whole lifetime so far).
/// Account tokens see only the periods attributed to their account.
pub async fn timeline(
    app: &App,
    caller: &Caller,
    id: &str,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Timeline> {
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(Error::invalid("to", "must be after `from`"));
    }
    let mut tx = app.store.read().await?;
    let agent = visible_agent(&mut tx, caller, id).await?;
    let from = from.map_or(agent.provisioned_at, Timestamp::as_millis);
    let to = to.map_or(i64::MAX, Timestamp::as_millis);
    let periods = tx
        .resource_periods(
            ResourceRef::agent(id),
            caller.principal.account_scope(),
            from,
            to,
        )
        .await?
        .into_iter()
        .map(|p| StatePeriod {
            account_id: p.account_id,
            state: p.state,
            started_at: Timestamp::from_millis(p.started_at),
            ended_at: p.ended_at.map(Timestamp::from_millis),
        })
        .collect();
    Ok(Timeline {
        agent_id: id.to_owned(),
        periods,
    })
}
