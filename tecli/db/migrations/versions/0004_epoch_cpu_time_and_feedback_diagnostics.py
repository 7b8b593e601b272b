"""epochs: CPU time and feedback diagnostics

epochs record the process CPU time of each epoch beside its wall time, and for TE
runs whether the feedback acted: fire rates of its source and target neurons, the
share of active pairs with TE above zero, and the mean and max |factor - 1|.
Nothing of this was measured before this revision: existing rows keep NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 19:20:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = (
    'cpu_seconds', 'source_fire_rate', 'target_fire_rate', 'te_positive_share', 'factor_dev_mean', 'factor_dev_max',
)


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
