//! The daily usage report, read from the rollup's rows.

use control_api::usage::{UsageReport, UsageRow};
use control_api::{Day, Timestamp};

use crate::app::{App, Caller};
use crate::error::{Error, Result};

/// Longest range one report covers.
pub const MAX_DAYS: i64 = 366;

/// Usage rows of days `from..=to`: the caller's account for account tokens, every account (or
/// `account_id`) for operators. Destroyed and transferred resources stay on the account that
/// owned them on each day.
pub async fn report(
    app: &App,
    caller: &Caller,
    from: Day,
    to: Day,
    account_id: Option<&str>,
) -> Result<UsageReport> {
    if to < from {
        return Err(Error::invalid("to", "must not be before `from`"));
    }
    let days = to.epoch_days() - from.epoch_days() + 1;
    if days > MAX_DAYS {
        return Err(Error::invalid(
            "to",
            format!("a report covers at most {MAX_DAYS} days, this asks for {days}"),
        ));
    }
    if account_id.is_some_and(|id| !crate::ids::looks_like(crate::ids::prefix::ACCOUNT, id)) {
        return Err(Error::invalid("account_id", "is not an account id"));
    }
    let scope = match (caller.principal.account_scope(), account_id) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "account_id",
                "only operator tokens may name an account",
            ));
        }
        (Some(own), None) => Some(own),
        (None, named) => named,
    };
    let mut tx = app.store.read().await?;
    let state = tx.rollup_state().await?;
    let rows = tx
        .usage(scope, &from.to_string(), &to.to_string())
        .await?
        .into_iter()
        .map(|row| {
            Ok(UsageRow {
                day: Day::parse(&row.day)
                    .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?,
                resource_kind: row.resource_kind,
                resource_id: row.resource_id,
                account_id: row.account_id,
                running_s: row.running_s,
                paused_s: row.paused_s,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(UsageReport {
        from,
        to,
        rolled_up_at: state.ran_at.map(Timestamp::from_millis),
        rows,
    })
}
