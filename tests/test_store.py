"""Reading a campaign store: listing, selection, partitioning, shard reads, fsspec URLs,
nothing unpickled, masked NaN pixels through to the loss."""

import dataclasses
import json
import pickle
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from model import ami_model, nominal_detector
from scaling.data._zarr import StoreError
from scaling.data.fitsio import read_exposure
from scaling.data.ingest import ingest
from scaling.data.store import ARRAYS, Campaign
from scaling.fitting.objective import loss
from scaling.fitting.params import make_batches
from scaling.fitting.start import load_observations
from tests.campaigns import RECORD_NPIX, T0, make_record, records_equal, write, write_campaign
from tests.test_ingest import with_nonfinite_masked

REPO = Path(__file__).resolve().parents[1]


class CountingStore(MemoryStore):
    """A MemoryStore that records every key it (or its read-only copy) is asked to read."""

    def __init__(self, store_dict=None, *, read_only=False, reads=None):
        super().__init__(store_dict, read_only=read_only)
        self.reads: list[str] = [] if reads is None else reads

    def with_read_only(self, read_only=False):
        return CountingStore(self._store_dict, read_only=read_only, reads=self.reads)

    async def get(self, key, prototype, byte_range=None):
        self.reads.append(key)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self.reads.extend(key for key, _ in key_ranges)
        return await super().get_partial_values(prototype, key_ranges)


@pytest.fixture(scope="module")
def eight_epochs(tmp_path_factory):
    """(files, counting store) of 8 epochs × 2 exposures + 8 calibrator exposures."""
    files = write_campaign(
        tmp_path_factory.mktemp("fits"), nepochs=8, per_epoch=2, ncal=8, hours_apart=3
    )
    store = CountingStore()
    ingest(files, store, progress=False)
    return files, store


def test_open_lists_exposures_from_one_read(eight_epochs):
    files, store = eight_epochs
    store.reads.clear()
    campaign = Campaign.open(store)
    assert store.reads == ["zarr.json"]
    assert len(campaign.exposures) == len(files) == 24
    info = campaign.info("jw01373001001_01101_00002_nis")
    assert (info.epoch, info.role, info.filter, info.target) == ("IO_001", "science", "F430M", "IO")
    assert (info.shape, info.ngroups, info.roll, info.source_file) == (
        (3, 8, 8),
        4,
        20.0,
        "o001_e002.fits",
    )
    assert [e.expmid for e in campaign.exposures] == sorted(e.expmid for e in campaign.exposures)
    assert store.reads == ["zarr.json"]


def test_select_by_target_filter_epoch_role(eight_epochs):
    campaign = Campaign.open(eight_epochs[1])
    assert len(campaign.select(role="calibrator").exposures) == 8
    assert {e.target for e in campaign.select(role="calibrator").exposures} == {"CAL1"}
    assert len(campaign.select(target="IO").exposures) == 16
    assert campaign.select(epoch="IO_003").names == campaign.epochs["IO_003"]
    two = campaign.select(epoch=["IO_001", "IO_002"], filter="F430M", role="science")
    assert list(two.epochs) == ["IO_001", "IO_002"] and len(two.names) == 4
    assert campaign.select(filter="F480M").names == ()
    with pytest.raises(ValueError, match="role: expected one of"):
        campaign.select(role="sky")
    with pytest.raises(KeyError, match="no exposure 'nope'"):
        campaign.info("nope")


def test_partition_is_balanced_whole_epochs_and_deterministic(eight_epochs):
    campaign = Campaign.open(eight_epochs[1])
    for n in (1, 3, 8):
        shards = campaign.partition(n)
        assert [s.index for s in shards] == list(range(n))
        names = [name for s in shards for name in s.exposures]
        assert sorted(names) == sorted(campaign.names)
        for epoch, members in campaign.epochs.items():
            holders = [s.index for s in shards if set(members) & set(s.exposures)]
            assert len(holders) == 1 and epoch in shards[holders[0]].epochs
        costs = [s.cost for s in shards]
        assert sum(costs) == sum(e.cost for e in campaign.exposures)
        largest_unit = 2 * 8 * 8 * 4  # one epoch: 2 exposures of 8×8 pixels × 4 groups
        assert max(costs) - min(costs) <= largest_unit
        assert shards == campaign.partition(n)
    shuffled = Campaign(campaign._root, reversed(campaign.exposures), campaign.where)
    assert shuffled.partition(3) == campaign.partition(3)
    many = campaign.partition(30)
    assert sum(1 for s in many if not s.exposures) == 30 - 16  # 8 epochs + 8 calibrators
    with pytest.raises(ValueError, match="number of shards"):
        campaign.partition(0)


def test_reading_one_shard_reads_only_its_arrays(eight_epochs):
    files, store = eight_epochs
    store.reads.clear()
    campaign = Campaign.open(store)
    shard = campaign.partition(8)[0]
    records = campaign.read(shard.exposures)
    chunks = [k for k in store.reads if not k.endswith("zarr.json")]
    metadata = [k for k in store.reads if k.endswith("zarr.json")]
    total = 3 * len(files)
    assert metadata == ["zarr.json"]
    arrays = {f"exposures/{n}/{a}" for n in shard.exposures for a in ARRAYS}
    assert {k.split("/c/")[0] for k in chunks} == arrays
    assert len(chunks) == len(arrays) <= total / 8
    by_file = {campaign.info(n).source_file: r for n, r in records.items()}
    for path in files:
        if path.name in by_file:
            assert records_equal(by_file[path.name], read_exposure(path))


def test_memory_url_round_trip(tmp_path):
    files = write_campaign(tmp_path, nepochs=2, per_epoch=2, ncal=1)
    url = "memory://store-test/campaign.zarr"
    ingest(files, url, progress=False)
    campaign = Campaign.open(url)
    assert len(campaign.names) == 5 and list(campaign.epochs) == ["IO_001", "IO_002"]
    records = campaign.read(campaign.partition(2)[1].exposures)
    for name, record in records.items():
        original = read_exposure(tmp_path / campaign.info(name).source_file)
        assert records_equal(record, original)
        assert np.array_equal(record.badpix, original.badpix)


def test_open_refuses_what_is_not_a_campaign(tmp_path):
    with pytest.raises(StoreError, match="no campaign store there"):
        Campaign.open(tmp_path / "absent.zarr")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Campaign.open(tmp_path / "file.zarr")
    with pytest.raises(StoreError, match="not a Zarr v3 ami-campaign store"):
        Campaign.open("memory://store-test/nothing.zarr")


# --- nothing read from user files is unpickled ---------------------------------------------


def test_no_code_path_unpickles():
    """No pickle in the readers; every np.load refuses pickles."""
    for path in sorted((REPO / "scaling").glob("*.py")) + sorted((REPO / "model").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"\b(c?pickle|joblib|dill)\b\s*(\.|import)", text), path
        assert "allow_pickle=True" not in text, path
        for call in re.findall(r"np\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, (path, call)


class _Unpickled(Exception):
    pass


def _raise_unpickled():
    raise _Unpickled


class _Payload:
    def __reduce__(self):
        return (_raise_unpickled, ())


def _put(store: MemoryStore, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def _json(store: MemoryStore, key: str) -> dict:
    return json.loads(sync(store.get(key, default_buffer_prototype())).to_bytes())


def test_a_store_naming_a_pickle_codec_is_refused_unread(tmp_path):
    store = MemoryStore()
    ingest(write_campaign(tmp_path, nepochs=1, per_epoch=1, ncal=0), store, progress=False)
    (name,) = Campaign.open(store).names
    key = f"exposures/{name}/slope"
    pickled = [{"name": "numcodecs.pickle", "configuration": {}}]
    root, array = _json(store, "zarr.json"), _json(store, f"{key}/zarr.json")
    root["consolidated_metadata"]["metadata"][key]["codecs"] = array["codecs"] = pickled
    _put(store, "zarr.json", json.dumps(root).encode())
    _put(store, f"{key}/zarr.json", json.dumps(array).encode())
    _put(store, f"{key}/c/0/0/0", pickle.dumps(_Payload()))
    with pytest.raises(StoreError, match=r"Unknown codec: 'numcodecs\.pickle'"):
        Campaign.open(store).read([name])


# --- masked NaN pixels: store → observations → batches → loss --------------------------------


def _params(model, nexposures: int, nepochs: int) -> dict:
    """Nominal detector, small aberrations, flat 5×5 images, centred sources."""
    nterms = model.optics.pupil.basis.shape[0]
    shared = nominal_detector(RECORD_NPIX) | {"jitter": jnp.asarray(0.1)}
    shared["aberrations"] = {"F430M": 5.0 * jnp.arange(nterms, dtype=float) / nterms}
    exposure = {
        "position": jnp.zeros((nexposures, 2)),
        "log_flux": jnp.full(nexposures, 3.5),
        "spectral_slope": jnp.zeros(nexposures),
    }
    epoch = {"log_image": jnp.zeros((nepochs, 5, 5))}
    return {"shared": shared, "epoch": epoch, "exposure": exposure}


def test_masked_nan_pixels_give_a_finite_loss_and_gradient(tmp_path):
    science = [make_record(1, k, T0 + k / 1440) for k in (1, 2)]
    calibrator = make_record(90, 1, T0, target="CAL1", is_psf=True, ngroups=3)
    files = [write(tmp_path, with_nonfinite_masked(r)) for r in (*science, calibrator)]
    campaign = ingest(files, "memory://masked-nan/c.zarr", progress=False).campaign
    names, epochs = list(campaign.names), list(campaign.epochs)
    observations = load_observations(campaign, names)
    assert all(np.isnan(o.slopes[:, 0, 0]).all() and o.bad[0, 0] for o in observations)
    model = ami_model(RECORD_NPIX, 2, 32, 1, 1, ("F430M",))
    params = _params(model, len(names), len(epochs))
    value_and_grad = eqx.filter_jit(
        jax.value_and_grad(lambda p, batches: loss(model, p, batches, {"tsv": 1.0}))
    )
    value, grads = value_and_grad(params, make_batches(observations, names, epochs))
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    zeroed = [dataclasses.replace(o, slopes=np.where(o.bad, 0.0, o.slopes)) for o in observations]
    zeroed_value, zeroed_grads = value_and_grad(params, make_batches(zeroed, names, epochs))
    assert zeroed_value == value  # masked values play no part
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, grads, zeroed_grads)))
