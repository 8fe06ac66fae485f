-- Software artifacts (what the server read from each at upload; the file itself is in the
-- artifact store) and the public keys each tenant trusts to sign them.

CREATE TABLE artifacts (
    tenant_id     UUID NOT NULL REFERENCES tenants(id),
    id            UUID NOT NULL,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    payload_type  TEXT NOT NULL,
    compatible    TEXT NOT NULL,
    depends       TEXT NOT NULL,
    provides      TEXT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    payload_bytes BIGINT NOT NULL,
    signed_by     TEXT NOT NULL,
    manifest      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name, version)
);

CREATE TABLE trusted_keys (
    tenant_id      UUID NOT NULL REFERENCES tenants(id),
    key_id         TEXT NOT NULL,
    name           TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);
