"""The key layout: bucket tags spread over the slots, and every key of a customer in its bucket's slot."""

from __future__ import annotations

from redis.crc import key_slot

from nba_service.store import keys


def test_each_bucket_tag_lands_in_its_own_range_of_slots():
    assert len(keys.BUCKET_TAGS) == keys.BUCKETS == 256
    assert len(set(keys.BUCKET_TAGS)) == keys.BUCKETS
    for bucket, tag in enumerate(keys.BUCKET_TAGS):
        assert 64 * bucket <= key_slot(tag.encode()) < 64 * (bucket + 1), (bucket, tag)


def test_a_customers_keys_its_decisions_and_its_buckets_streams_share_one_slot():
    for customer in ("c42", "ana", "x{y}z", "00000000", "cliente-ñ"):
        bucket = keys.bucket_of(customer)
        decision_id = keys.new_decision_id(customer)
        assert keys.decision_bucket(decision_id) == bucket
        same_slot = [
            keys.profile(customer), keys.journey(customer), keys.contacts(customer), keys.open_journeys(customer),
            keys.declines(customer), keys.accepted(customer), keys.decision_index(customer),
            keys.decision(decision_id), keys.pending(bucket), keys.outcome_stream(bucket), keys.consent_audit(bucket),
        ]
        assert {key_slot(k.encode()) for k in same_slot} == {key_slot(keys.BUCKET_TAGS[bucket].encode())}, customer


def test_global_keys_share_the_global_slot():
    globals_ = [keys.POLICY_LIVE, keys.POLICY_SEQ, keys.POLICY_VERSIONS, keys.policy_version(3), keys.MODEL_LIVE,
                keys.MODEL_SEQ, keys.MODEL_VERSIONS, keys.model_version(3), keys.CHANGE_LOG, keys.LEARNER_LOCK,
                keys.LEARNER_WATERMARKS, keys.LEGACY_DECISIONS, keys.LAYOUT]
    assert len({key_slot(k.encode()) for k in globals_}) == 1


def test_an_id_that_names_no_bucket_is_told_apart():
    assert keys.decision_bucket("0123456789abcdef0123456789abcdef") is None  # the layout before buckets
    assert keys.decision_bucket("zz-0123") is None and keys.decision_bucket("") is None
