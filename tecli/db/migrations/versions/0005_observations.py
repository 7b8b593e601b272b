"""observations: information flow measured while a run trains

A new table `observations` holds, for runs trained with --observe, one row per run,
epoch and layer: the layer's mean neuron entropy, H(T) and I(T;Y) of its binarized
patterns, and the TE to the next Linear layer and to the class layer. runs and
attempts record the probe size (NULL: not observed), epochs the observation's time.
No run observed before this revision: existing rows keep NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 22:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ('runs', 'attempts')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'observations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('layer', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('neurons', sa.Integer(), nullable=False),
        sa.Column('neuron_entropy', sa.Float(), nullable=False),
        sa.Column('h_t', sa.Float(), nullable=False),
        sa.Column('i_ty', sa.Float(), nullable=False),
        sa.Column('te_next', sa.Float(), nullable=True),
        sa.Column('te_class', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'epoch', 'layer'),
    )
    with op.batch_alter_table('observations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_observations_run_id'), ['run_id'], unique=False)
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('observe', sa.Integer(), nullable=True))
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('observe_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.drop_column('observe_seconds')
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('observe')
    with op.batch_alter_table('observations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_observations_run_id'))
    op.drop_table('observations')
