//! Accounts and their API tokens. Operator-only over HTTP; also reachable from the command line.

use std::path::{Path, PathBuf};

use control_api::Timestamp;
use control_api::accounts::{Account, CreateAccount, CreateToken, CreatedToken, TokenRole};
use control_api::problem::Problem;
use tracing::info;

use crate::app::App;
use crate::auth;
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::store::{AccountRow, Store};
use crate::validate::Checks;

pub async fn create(
    app: &App,
    request: &CreateAccount,
    idem: Option<&IdempotencyKey>,
) -> Result<Account> {
    let mut checks = Checks::new();
    checks.display_text("name", &request.name, 100);
    checks.finish()?;
    let row = AccountRow {
        id: new_id(prefix::ACCOUNT),
        name: request.name.clone(),
        created_at: app.clock.now().as_millis(),
    };
    let account = Account {
        id: row.id.clone(),
        name: row.name.clone(),
        created_at: Timestamp::from_millis(row.created_at),
    };
    let mut tx = app.store.write().await?;
    tx.insert_account(&row).await?;
    idempotency::record(&mut tx, idem, 201, &account).await?;
    tx.commit().await?;
    info!(account_id = %account.id, "account created");
    Ok(account)
}

/// Creates a token for `account_id`, or an operator token when it is `None`. The secret is in
/// the answer only; a retry with the same Idempotency-Key is told the token exists already,
/// because storing the answer would store the secret.
pub async fn create_token(
    app: &App,
    account_id: Option<&str>,
    request: &CreateToken,
    idem: Option<&IdempotencyKey>,
) -> Result<CreatedToken> {
    let mut checks = Checks::new();
    if let Some(label) = &request.label {
        checks.display_text("label", label, 100);
    }
    checks.finish()?;
    let role = if account_id.is_some() {
        TokenRole::Account
    } else {
        TokenRole::Operator
    };
    let issued = auth::issue(
        role,
        account_id.map(str::to_owned),
        request.label.clone(),
        app.clock.now().as_millis(),
    )?;
    if let Some(account_id) = account_id
        && !crate::ids::looks_like(prefix::ACCOUNT, account_id)
    {
        return Err(Error::not_found(
            "account",
            account_id.escape_debug().to_string(),
        ));
    }
    let mut tx = app.store.write().await?;
    if let Some(account_id) = account_id
        && tx.account(account_id).await?.is_none()
    {
        return Err(Error::not_found("account", account_id));
    }
    tx.insert_token(&issued.row).await?;
    let replay = Problem {
        kind: "/problems/already-created".to_owned(),
        title: "Already created".to_owned(),
        status: 409,
        detail: format!(
            "an earlier request with this Idempotency-Key created token {}; its secret was shown once and cannot be shown again",
            issued.row.id
        ),
        instance: None,
        request_id: None,
        errors: Vec::new(),
    };
    idempotency::record(&mut tx, idem, 409, &replay).await?;
    tx.commit().await?;
    info!(token_id = %issued.row.id, account_id = %account_id.unwrap_or("-"), role = ?role, "token created");
    Ok(CreatedToken {
        id: issued.row.id,
        role,
        account_id: issued.row.account_id,
        label: issued.row.label,
        created_at: Timestamp::from_millis(issued.row.created_at),
        token: issued.bearer,
    })
}

/// The file the first operator token is written to.
pub fn operator_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("operator-token")
}

/// On a database without any operator token, creates one and writes it to
/// `<data-dir>/operator-token` with mode 0600. Returns the file's path when it did.
///
/// The file is written before the token is stored: if writing fails, no token exists and the
/// next start tries again, rather than leaving a token nobody can read.
pub async fn ensure_operator_token(
    store: &Store,
    now: Timestamp,
    data_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    if store.read().await?.operator_token_count().await? > 0 {
        return Ok(None);
    }
    let issued = auth::issue(
        TokenRole::Operator,
        None,
        Some("first start".to_owned()),
        now.as_millis(),
    )?;
    let path = operator_token_path(data_dir);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| {
            // An existing file keeps its mode on open: set it.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            writeln!(file, "{}", issued.bearer)?;
            file.sync_all()
        });
    written.map_err(|e| {
        anyhow::anyhow!("cannot write the operator token to {}: {e}", path.display())
    })?;
    let mut tx = store.write().await?;
    tx.insert_token(&issued.row).await?;
    tx.commit().await?;
    info!(token_id = %issued.row.id, role = ?TokenRole::Operator, "token created");
    Ok(Some(path))
}
