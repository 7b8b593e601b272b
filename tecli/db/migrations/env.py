"""Alembic environment for tecli's results database.

tecli runs migrations itself (tecli.migrate) and hands over an open connection.
Run by the alembic command line instead, it connects to `sqlalchemy.url` from the
alembic config, else to tecli's own default (--db rules: TECLI_DB, ./tecli.db).
"""

from alembic import context

from tecli.db.schema import Base
from tecli.db.store import create_db_engine


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_db_engine(context.config.get_main_option("sqlalchemy.url")).begin() as own:
        run(own)
