//! Managing users and API tokens, the same way from the HTTP API and the command line: each
//! change is checked, made, and written to the audit log with who made it.

use super::error::AuthError;
use super::principal::{Actor, ClientAddress, Role, check_name};
use super::secret::{Password, SecretToken};
use super::{Audit, hash_password_blocking, record};
use crate::store::Store;
use crate::store::auth::{DeleteUser, NewToken, TokenRow, UserRow};

/// Adds a user with an argon2id hash of `password`.
pub async fn add_user(
    store: &Store,
    by: &Actor,
    address: Option<&ClientAddress>,
    name: &str,
    role: Role,
    password: Password,
) -> Result<UserRow, AuthError> {
    check_name("user", name).map_err(AuthError::Invalid)?;
    password.check_strength().map_err(AuthError::Invalid)?;
    let hash = hash_password_blocking(password).await?;
    let user = store
        .create_user(name, role.as_str(), &hash, &by.name)
        .await?
        .ok_or_else(|| AuthError::Conflict(format!("a user named {name:?} already exists")))?;
    record(
        store,
        Audit {
            actor: by,
            action: "user_create",
            target: Some(name),
            address,
            detail: Some(&format!("role {role}")),
        },
    )
    .await;
    Ok(user)
}

/// Gives a user a new password and ends the user's sessions.
pub async fn set_password(
    store: &Store,
    by: &Actor,
    address: Option<&ClientAddress>,
    name: &str,
    password: Password,
) -> Result<(), AuthError> {
    password.check_strength().map_err(AuthError::Invalid)?;
    let hash = hash_password_blocking(password).await?;
    if !store.set_password(name, &hash).await? {
        return Err(AuthError::NotFound(format!("no user is named {name:?}")));
    }
    record(
        store,
        Audit {
            actor: by,
            action: "user_password",
            target: Some(name),
            address,
            detail: None,
        },
    )
    .await;
    Ok(())
}

/// Deletes a user, ends its sessions and revokes the API tokens that belong to it (those it
/// created, directly or with its tokens); the last admin stays.
pub async fn delete_user(
    store: &Store,
    by: &Actor,
    address: Option<&ClientAddress>,
    name: &str,
) -> Result<(), AuthError> {
    let revoked_tokens = match store.delete_user(name).await? {
        DeleteUser::Deleted { revoked_tokens } => revoked_tokens,
        DeleteUser::NotFound => {
            return Err(AuthError::NotFound(format!("no user is named {name:?}")));
        }
        DeleteUser::LastAdmin => {
            return Err(AuthError::Conflict(format!(
                "{name:?} is the last admin: make another user admin before deleting this one"
            )));
        }
    };
    let detail = (!revoked_tokens.is_empty())
        .then(|| format!("revoked its tokens {}", revoked_tokens.join(", ")));
    record(
        store,
        Audit {
            actor: by,
            action: "user_delete",
            target: Some(name),
            address,
            detail: detail.as_deref(),
        },
    )
    .await;
    Ok(())
}

/// Creates an API token, belonging to the user behind `by` (if any). The returned secret is the
/// only copy: show it once.
pub async fn create_token(
    store: &Store,
    by: &Actor,
    address: Option<&ClientAddress>,
    name: &str,
    role: Role,
) -> Result<(TokenRow, SecretToken), AuthError> {
    check_name("token", name).map_err(AuthError::Invalid)?;
    let token = SecretToken::generate_api_token();
    let row = match store
        .create_token(name, role.as_str(), &token.hash(), &by.name, by.user)
        .await?
    {
        NewToken::Created(row) => row,
        NewToken::NameTaken => {
            return Err(AuthError::Conflict(format!(
                "a live token is already named {name:?}: revoke it first or pick another name"
            )));
        }
        NewToken::CreatorGone => {
            return Err(AuthError::Conflict(format!(
                "the user {:?} has been deleted, so its token would be revoked at once: no token was created",
                by.name
            )));
        }
    };
    record(
        store,
        Audit {
            actor: by,
            action: "token_create",
            target: Some(name),
            address,
            detail: Some(&format!("role {role}, id {}", row.id)),
        },
    )
    .await;
    Ok((row, token))
}

/// Which token to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    Id(i64),
    Name(String),
}

impl TokenRef {
    /// A number is an id, anything else a name.
    pub fn parse(text: &str) -> Self {
        text.parse()
            .map_or_else(|_| TokenRef::Name(text.to_owned()), TokenRef::Id)
    }
}

/// Revokes a live token; it stops working with the next request.
pub async fn revoke_token(
    store: &Store,
    by: &Actor,
    address: Option<&ClientAddress>,
    which: &TokenRef,
) -> Result<TokenRow, AuthError> {
    let row = match which {
        TokenRef::Id(id) => store
            .revoke_token(*id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("no live token has id {id}")))?,
        TokenRef::Name(name) => store
            .revoke_token_named(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("no live token is named {name:?}")))?,
    };
    record(
        store,
        Audit {
            actor: by,
            action: "token_revoke",
            target: Some(&row.name),
            address,
            detail: Some(&format!("id {}", row.id)),
        },
    )
    .await;
    Ok(row)
}
