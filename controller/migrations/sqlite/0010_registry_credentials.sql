-- Per-registry credentials (`skiff registry login`): the controller pulls
-- with them when an app names an oci:// artifact, and hands them to the
-- nodes that run such an app. The API never returns the password.
CREATE TABLE registry_credentials (
    registry TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    password TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
