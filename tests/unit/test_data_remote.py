"""JetDataset reads s3:// URLs through open_h5 (on a real S3 server on loopback)."""

from __future__ import annotations

import pickle

import pytest
import s3_server
import torch
from test_data_helpers import write_h5

from saltx.data.dataset import JetDataset
from saltx.data.loader import build_dataloader
from saltx.errors import DataError

s3_endpoint = s3_server.s3_endpoint

VARS = {"jets": ["pt_btagJes"], "tracks": ["d0", "pt"]}


@pytest.mark.slow
def test_s3_url_reads_like_local(tmp_path, s3_endpoint):
    local = write_h5(tmp_path / "d.h5", n_jets=30, n_tracks=4)
    url = s3_endpoint.upload(local, "data/d.h5")
    ref = JetDataset(local, VARS)[0:30]
    remote = JetDataset(url, VARS)
    assert torch.equal(remote[0:30].inputs["tracks"], ref.inputs["tracks"])
    clone = pickle.loads(pickle.dumps(remote))  # what a spawned worker gets: reopens lazily
    assert torch.equal(clone[5:9].inputs["tracks"], ref.inputs["tracks"][5:9])
    loader = build_dataloader(remote, batch_size=10, shuffle=False, drop_last=False)
    assert sum(b.num_jets for b in loader) == 30
    with pytest.raises(DataError):
        JetDataset(url.replace("d.h5", "missing.h5"), VARS)
