-- The user account behind a rollout's request (signed in, or through a token that belongs to
-- it), so that a rollout awaiting approval can be refused to its requester whichever of their
-- sessions or tokens they approve with. NULL for webhooks and for tokens that belong to no user
-- (those are matched by name). No foreign key, as for api_tokens.created_by_user.
ALTER TABLE deployments ADD COLUMN requester_user INTEGER;
