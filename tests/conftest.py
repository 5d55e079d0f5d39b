import pytest

from support import start_cluster


@pytest.fixture
def cluster_factory(tmp_path):
    """Start clusters of real nodes on loopback; all are stopped by PID at teardown."""
    started = []

    def factory(names=("a", "b", "c"), **kwargs):
        cluster = start_cluster(tmp_path, names, **kwargs)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        cluster.stop()
