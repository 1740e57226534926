"""The ``postgres`` fixture: a real server SQLAlchemy can use, taken down and up again."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from postgres import PostgresServer

pytestmark = pytest.mark.slow  # starts the session's PostgreSQL server

metadata = sa.MetaData()
readings = sa.Table(
    "fixture_readings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)


def select_values(engine: sa.Engine) -> list[float]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(readings.c.value).order_by(readings.c.id)))


def test_create_insert_select_survives_an_outage(postgres: PostgresServer) -> None:
    engine = sa.create_engine(postgres.url, pool_pre_ping=True)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(readings), [{"value": 1.5}, {"value": -2.0}])
        assert select_values(engine) == [1.5, -2.0]
        port = postgres.port

        with postgres.down():
            assert not postgres.running
            with pytest.raises(sa.exc.OperationalError):
                select_values(engine)

        assert postgres.running and postgres.port == port
        assert postgres.url.endswith(f"@127.0.0.1:{port}/headrace")
        assert select_values(engine) == [1.5, -2.0]
    finally:
        if postgres.running:
            metadata.drop_all(engine)
        engine.dispose()
