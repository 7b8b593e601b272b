"""claims, owners and conditions of measurement; checkpoints

claims: one row per run key naming the run that holds it (existing keys are
given to their newest run). attempts: each process's stretch of a run (existing
runs get one each). runs: the owner's identity for liveness across
machines, its lease, and the conditions of measurement; data_copy may be empty
while a sweep's run sets up. epochs: a loss that is not finite (a diverged run) is
stored as NULL, as SQLite would anyway. checkpoints: a run's latest training state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 06:57:52.301285

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('checkpoints',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=False),
    sa.Column('code_version', sa.String(length=100), nullable=False),
    sa.Column('saved_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id')
    )
    op.create_table('claims',
    sa.Column('run_key', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('claimed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_key')
    )
    with op.batch_alter_table('claims', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_claims_run_id'), ['run_id'], unique=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('boot_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('pid_namespace', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('pid_started', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('lease_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('gpu_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('cpu_model', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('code_version', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('code_commit', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('code_dirty', sa.Boolean(), nullable=True))
        batch_op.alter_column('data_copy',
               existing_type=sa.VARCHAR(length=200),
               nullable=True)

    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.alter_column('train_loss', existing_type=sa.Float(), nullable=True)
        batch_op.alter_column('test_loss', existing_type=sa.Float(), nullable=True)

    op.create_table('attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('first_epoch', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('owner', sa.String(length=32), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=32), nullable=False),
    sa.Column('gpu_name', sa.String(length=200), nullable=True),
    sa.Column('threads', sa.Integer(), nullable=True),
    sa.Column('cpu_model', sa.String(length=200), nullable=True),
    sa.Column('code_version', sa.String(length=100), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'number')
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attempts_run_id'), ['run_id'], unique=False)

    op.execute(
        "INSERT INTO claims (run_key, run_id, version, claimed_at) "
        "SELECT run_key, id, 1, started_at FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY run_key)"
    )
    op.execute(
        "INSERT INTO attempts (run_id, number, first_epoch, status, started_at, ended_at, host, pid, device, threads, error) "
        "SELECT id, 1, 1, status, started_at, finished_at, host, pid, device, threads, error FROM runs"
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.alter_column('test_loss', existing_type=sa.Float(), nullable=False)
        batch_op.alter_column('train_loss', existing_type=sa.Float(), nullable=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('data_copy',
               existing_type=sa.VARCHAR(length=200),
               nullable=False)
        batch_op.drop_column('code_dirty')
        batch_op.drop_column('code_commit')
        batch_op.drop_column('code_version')
        batch_op.drop_column('cpu_model')
        batch_op.drop_column('gpu_name')
        batch_op.drop_column('lease_seconds')
        batch_op.drop_column('pid_started')
        batch_op.drop_column('pid_namespace')
        batch_op.drop_column('boot_id')
        batch_op.drop_column('owner')

    with op.batch_alter_table('claims', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_claims_run_id'))

    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attempts_run_id'))

    op.drop_table('attempts')
    op.drop_table('claims')
    op.drop_table('checkpoints')
