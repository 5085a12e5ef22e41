"""Add job leases and idempotency keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 20:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_token", sa.UUID(), nullable=True))
    op.add_column("jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("lost_runs", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("idempotency_key", sa.String(length=200), nullable=True))
    op.add_column("jobs", sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
    op.create_index(
        "uq_jobs_client_id_idempotency_key",
        "jobs",
        ["client_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_jobs_status_next_attempt_at", "jobs", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_next_attempt_at", table_name="jobs")
    op.drop_index("uq_jobs_client_id_idempotency_key", table_name="jobs")
    op.drop_column("jobs", "request_fingerprint")
    op.drop_column("jobs", "idempotency_key")
    op.drop_column("jobs", "lost_runs")
    op.drop_column("jobs", "lease_until")
    op.drop_column("jobs", "run_token")
