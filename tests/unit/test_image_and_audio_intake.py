"""The checks on image and audio inputs, their cache keys, the media params and prices, and the image
network's loading rules (no services: the object store is a local folder)."""
from __future__ import annotations

import base64
import io
import os
import time
import wave

import pytest
from PIL import Image

from cortex_tasks.core.audio.intake import sniff_format
from cortex_tasks.core.audio.intake import stage_item as stage_audio
from cortex_tasks.core.cache.keys import cache_key
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.images.intake import check_image, load_staged, stage_inputs
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.openai.config import image_cost_usd, transcription_cost_usd
from cortex_tasks.core.settings import reset_settings_cache
from cortex_tasks.core.validation.media import image_params, transcription_params


@pytest.fixture(autouse=True)
def artifacts(tmp_path, monkeypatch):
    from cortex_tasks.core.storage import object_store

    monkeypatch.setenv("CORTEX_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    reset_settings_cache()
    object_store._stores.clear()
    yield
    object_store._stores.clear()


def png(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 10, 10), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(out, "PNG")
    return out.getvalue()


def item(data: bytes) -> dict[str, str]:
    return {"image": base64.b64encode(data).decode()}


def test_a_good_image_is_staged_under_its_hash_and_read_back():
    staged = stage_inputs([item(png())], "acme")
    assert set(staged[0]) == {"image_sha256", "image_object"}
    assert staged[0]["image_object"] == f"tenants/acme/images/{staged[0]['image_sha256']}"
    assert load_staged(staged[0]) == png()


@pytest.mark.parametrize(("data", "words"), [
    (b"", "is empty"),
    (b"hello, not an image", "not an image Cortex can read"),
    (None, "cannot be decoded"),  # a photograph cut short
])
def test_undecodable_images_are_refused_naming_the_item(data, words):
    if data is None:
        noisy = io.BytesIO()
        Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(noisy, "JPEG")
        data = noisy.getvalue()[: len(noisy.getvalue()) * 3 // 5]
    with pytest.raises(ItemError) as refused:
        check_image(data, "inputs[4]", {"index": 4})
    assert refused.value.code == "invalid_image"
    assert str(refused.value).startswith("inputs[4] ") and words in str(refused.value)
    assert refused.value.details["index"] == 4


def test_pixels_are_limited_before_decoding(monkeypatch):
    monkeypatch.setenv("CORTEX_IMAGE_MAX_PIXELS", "1000")
    reset_settings_cache()
    with pytest.raises(ItemError, match=r"40x30 pixels; at most 1000"):
        check_image(png((40, 30)), "inputs[0]")
    check_image(png((20, 20)), "inputs[0]")


def test_the_default_limits_take_a_24_megapixel_photograph():
    """The shipped defaults (8 MiB, 25 Mpx) beside the lowered limits the tests above and the integration
    tests set: a 6000x4000 camera image passes, decoded in full."""
    from cortex_tasks.core.settings import get_settings

    assert (get_settings().image_max_bytes, get_settings().image_max_pixels) == (8 * 1024 * 1024, 25_000_000)
    out = io.BytesIO()
    Image.new("RGB", (6000, 4000), (30, 60, 90)).save(out, "JPEG", quality=80)
    assert len(out.getvalue()) < 8 * 1024 * 1024
    facts = check_image(out.getvalue(), "inputs[0]")
    assert (facts.width, facts.height, facts.format) == (6000, 4000, "JPEG")


def test_a_decompression_bomb_is_refused_with_the_default_limits():
    bomb = png((12_000, 12_000), mode="1")  # 144 Mpx of one colour: a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ItemError, match="pixels"):
        check_image(bomb, "inputs[0]")


def test_oversized_base64_is_refused_unread(monkeypatch):
    monkeypatch.setenv("CORTEX_IMAGE_MAX_BYTES", "100")
    reset_settings_cache()
    with pytest.raises(ItemError, match="larger than 100 bytes"):
        stage_inputs([item(b"x" * 1000)], "acme")


def test_a_refused_request_stores_nothing(tmp_path):
    with pytest.raises(ItemError, match=r"inputs\[1\]"):
        stage_inputs([item(png()), item(b"nope")], "acme")
    assert not (tmp_path / "artifacts" / "tenants").exists()


def test_references_stay_inside_the_tenant():
    from cortex_tasks.core.storage.object_store import get_object_store

    get_object_store().put("tenants/acme/photos/a.png", png())
    assert stage_inputs([{"image_ref": "tenants/acme/photos/a.png"}], "acme")[0]["image_object"] == \
        "tenants/acme/photos/a.png"
    for reference in ("tenants/other/photos/a.png", "tenants/acme/../other/a.png", "photos/a.png"):
        with pytest.raises(ItemError):
            stage_inputs([{"image_ref": reference}], "acme")


def test_the_cache_key_of_an_image_is_its_bytes_hash():
    first = {"image_sha256": "a" * 64, "image_object": "tenants/one/images/" + "a" * 64}
    same_bytes = {"image_sha256": "a" * 64, "image_object": "tenants/two/uploads/x.png"}
    other = {"image_sha256": "b" * 64, "image_object": "tenants/one/images/" + "b" * 64}

    def key(value):
        return cache_key("image_embed", "efficientnet-lite0", "1", "{}", value)

    assert key(first) == key(same_bytes) != key(other)


def wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as recording:
        recording.setnchannels(1)
        recording.setsampwidth(2)
        recording.setframerate(8000)
        recording.writeframes(b"\x00\x00" * int(8000 * seconds))
    return out.getvalue()


@pytest.mark.parametrize(("head", "kind"), [
    (wav(0.1)[:16], "wav"), (b"fLaC\x00\x00\x00\x22", "flac"), (b"OggS\x00\x02", "ogg"), (b"ID3\x04\x00", "mp3"),
    (b"\xff\xfb\x90\x64", "mp3"), (b"\x00\x00\x00\x20ftypM4A ", "m4a"), (b"\x00\x00\x00\x18ftypisom", "mp4"),
    (b"\x1a\x45\xdf\xa3\x9f", "webm"), (b"hello world", None), (b"\x89PNG\r\n\x1a\n", None),
])
def test_recordings_are_recognised_by_their_first_bytes(head, kind):
    assert sniff_format(head) == kind


def test_a_recording_is_staged_with_the_extension_of_its_format():
    staged = stage_audio({"audio": base64.b64encode(wav(0.2)).decode(), "filename": "call.mp3"}, "acme", "inputs[0]")
    assert staged["filename"] == "call.wav" and staged["audio_object"].startswith("tenants/acme/audio/")
    with pytest.raises(ItemError, match="not a recording"):
        stage_audio({"audio": base64.b64encode(png()).decode()}, "acme", "inputs[0]")


def test_image_params_follow_the_model():
    assert image_params("gpt-image-1", {}) == image_params("gpt-image-1", {"size": "1024x1024", "quality": "medium"})
    assert image_params("dall-e-3", {"quality": "hd", "style": "vivid"}).style == "vivid"
    for model, params in (("dall-e-3", {"n": 2}), ("gpt-image-1", {"style": "vivid"}),
                          ("gpt-image-1", {"size": "1792x1024"}), ("dall-e-3", {"quality": "high"}),
                          ("gpt-image-1", {"n": True})):
        with pytest.raises(JobInputError):
            image_params(model, params)
    assert transcription_params({"language": "de"}).language == "de"
    with pytest.raises(JobInputError):
        transcription_params({"temperature": 2})


def test_media_prices_per_minute_and_per_image(monkeypatch):
    assert transcription_cost_usd("whisper-1", 90) == pytest.approx(0.009)
    assert image_cost_usd("dall-e-3", "hd", "1792x1024", 1) == pytest.approx(0.12)
    assert image_cost_usd("gpt-image-1", "low", "1024x1024", 3) == pytest.approx(0.033)
    monkeypatch.setenv("CORTEX_OPENAI_MEDIA_PRICES", '{"whisper-1": {"per_minute": 0.01}}')
    reset_settings_cache()
    assert transcription_cost_usd("whisper-1", 60) == pytest.approx(0.01)
    assert image_cost_usd("gpt-image-1", "low", "1024x1024", 1) == pytest.approx(0.011)  # the others stay


def test_the_network_loads_strictly_and_only_the_pinned_weights():
    from cortex_tasks.core.catalogue import MODELS
    from cortex_tasks.runtime.models.efficientnet import EfficientNetLite0, WeightsMismatch

    pinned = dict(MODELS["efficientnet-lite0"].card)["weights_sha256"]
    network = EfficientNetLite0(pinned)
    assert network.weights_sha256 == pinned
    with pytest.raises(WeightsMismatch):
        EfficientNetLite0("0" * 64)


def _staged_object_age(name: str, seconds: float) -> None:
    """Make a staged object look `seconds` old (the local store keeps its time as the file's)."""
    from cortex_tasks.core.storage.object_store import get_object_store

    path = get_object_store().root / name
    when = path.stat().st_mtime - seconds
    os.utime(path, (when, when))


def test_the_same_bytes_staged_again_reuse_their_object_until_it_is_half_way_to_expiry():
    from cortex_tasks.core.settings import get_settings
    from cortex_tasks.core.storage.object_store import get_object_store

    retention = get_settings().staged_media_retention_days * 86400
    assert retention == 7 * 86400  # the shipped default: a week after it was last sent
    image = {"image": base64.b64encode(png()).decode()}
    name = stage_inputs([image], "default")[0]["image_object"]
    store = get_object_store()
    _staged_object_age(name, retention / 2 - 3600)
    kept = store.modified_at(name)
    stage_inputs([image], "default")  # sent again while fresh: the object is reused as it is
    assert store.modified_at(name) == kept
    _staged_object_age(name, 7200)  # now past half of its retention
    stage_inputs([image], "default")
    assert time.time() - store.modified_at(name) < 600  # written again: the next expiry run cannot take it
    recording = stage_audio({"audio": base64.b64encode(wav(0.2)).decode()}, "default", "inputs[0]")
    _staged_object_age(recording["audio_object"], retention)
    assert stage_audio({"audio": base64.b64encode(wav(0.2)).decode()}, "default", "inputs[0]") == recording
    assert time.time() - store.modified_at(recording["audio_object"]) < 600
    assert store.modified_at("tenants/default/images/" + "0" * 64) is None  # never staged
