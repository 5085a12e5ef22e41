"""Record when each provider key was last checked, and the outcome.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 20:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "provider_keys", sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("provider_keys", sa.Column("last_check_outcome", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("provider_keys", "last_check_outcome")
    op.drop_column("provider_keys", "last_checked_at")
