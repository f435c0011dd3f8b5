-- Which user an API token belongs to, so that deleting the user revokes it: the user who
-- created it, or, for a token created with another token, that token's user. NULL for tokens
-- created with the `baton` command (they belong to whoever runs Baton's machine). No foreign
-- key: deleting the user must not be blocked or erase the record, and user ids are never reused
-- (AUTOINCREMENT).
ALTER TABLE api_tokens ADD COLUMN created_by_user INTEGER;

-- Tokens created before this column existed: the user whose name they name as their creator.
-- (A token created with a token that shares a user's name is counted as that user's: it is then
-- revoked with the user, the safe side.)
UPDATE api_tokens
SET created_by_user = (SELECT users.id FROM users WHERE users.name = api_tokens.created_by);

CREATE INDEX api_tokens_by_creator ON api_tokens (created_by_user) WHERE revoked_at IS NULL;
