"""memory format as a condition of measurement

runs and attempts record the memory format training used (channels_last, tecli's
default from here on, or contiguous). Every run recorded before this revision
trained in the contiguous format, so existing rows say so.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ('runs', 'attempts')


def upgrade() -> None:
    """Upgrade schema."""
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('memory_format', sa.String(length=20), nullable=True))
        op.execute(f"UPDATE {table} SET memory_format = 'contiguous'")


def downgrade() -> None:
    """Downgrade schema."""
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('memory_format')
