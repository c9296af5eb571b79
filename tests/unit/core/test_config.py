"""The config loads the bundled files, rejects bad input with a message naming the key, and
keeps secrets out of files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from config import (
    AppConfig,
    ConfigError,
    Secrets,
    apply_overrides,
    default_config_path,
    load_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"


@pytest.mark.parametrize("name", ["demo.toml", "paper.toml", "testnet.toml"])
def test_bundled_configs_load(name: str) -> None:
    cfg = load_config(CONFIG_DIR / name, env={})
    assert isinstance(cfg, AppConfig)


def test_default_config_is_the_synthetic_demo() -> None:
    cfg = load_config(env={})
    assert default_config_path().name == "demo.toml"
    assert cfg.market.source == "synthetic"


def test_config_is_frozen() -> None:
    cfg = load_config(env={})
    with pytest.raises(ValidationError):
        cfg.market.timeframe = "1h"  # type: ignore[misc]


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[market]\ntimefram = "6h"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "market.timefram" in str(info.value)
    assert "unknown key" in str(info.value)


def test_bad_value_message_names_key_value_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[market]\ntimeframe = "7x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "market.timeframe" in message and "'7x'" in message and "timeframe like" in message


def test_end_before_start_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[market]\nstart = 2022-01-01\nend = 2021-01-01\n")
    with pytest.raises(ConfigError, match="must be after start"):
        load_config(path, env={})


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[market\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(path, env={})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_environment_overrides_nested_keys() -> None:
    env = {
        "CRYPTORLPM__MARKET__TIMEFRAME": "4h",
        "CRYPTORLPM__MARKET__COINS": '["BTC", "ETH"]',
        "CRYPTORLPM__SYNTHETIC__SEED": "11",
    }
    cfg = load_config(env=env)
    assert cfg.market.timeframe == "4h"
    assert cfg.market.coins == ("BTC", "ETH")
    assert cfg.synthetic.seed == 11


def test_bad_environment_override_is_reported_like_a_file_value() -> None:
    with pytest.raises(ConfigError, match=r"market\.coins"):
        load_config(env={"CRYPTORLPM__MARKET__COINS": '["btc"]'})


def test_secrets_come_from_the_environment_and_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTORLPM_EXCHANGE_API_KEY", "key-123")
    monkeypatch.setenv("CRYPTORLPM_EXCHANGE_SECRET", "secret-456")
    secrets = Secrets()
    assert secrets.exchange_api_key is not None
    assert secrets.exchange_api_key.get_secret_value() == "key-123"
    assert "secret-456" not in repr(secrets) and "secret-456" not in str(secrets)


def test_secrets_cannot_be_put_in_a_config_file_and_are_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "leaky.toml"
    path.write_text('[exchange]\napi_key = "sk-live-abc123"\n')
    with pytest.raises(ConfigError, match=r"exchange\.api_key") as info:
        load_config(path, env={})
    assert "sk-live-abc123" not in str(info.value)
    assert "CRYPTORLPM_EXCHANGE_API_KEY" in str(info.value)


def test_a_secret_set_through_the_override_syntax_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"CRYPTORLPM__EXCHANGE__API_KEY": "sk-live-SECRET123"})
    assert "SECRET123" not in str(info.value)


def test_a_folder_or_a_non_utf8_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder; expected a TOML file"):
        load_config(tmp_path, env={})
    path = tmp_path / "latin1.toml"
    path.write_bytes("# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 5\)"):
        load_config(path, env={})


def test_an_environment_error_names_the_variable_and_one_problem_is_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[market]\ntimeframe = "6h"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"CRYPTORLPM__LIVE__MAX_CYCLES": "none"})
    message = str(info.value)
    assert "\n" not in message and str(path) not in message
    assert message.startswith(
        "invalid setting: environment CRYPTORLPM__LIVE__MAX_CYCLES (live.max_cycles) = 'none'"
    )


def test_command_line_overrides_are_validated_like_the_file() -> None:
    cfg = load_config(env={})
    assert apply_overrides(cfg, {"live.max_cycles": 3}, {}).live.max_cycles == 3
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, {"live.max_cycles": 0}, {"live.max_cycles": "--max-cycles"})
    assert str(info.value) == (
        "invalid setting: --max-cycles (live.max_cycles) = 0: Input should be greater than or "
        "equal to 1"
    )


def test_training_takes_its_cost_from_the_broker_and_the_old_fee_key_is_one_clear_line(
    tmp_path: Path,
) -> None:
    cfg = load_config(CONFIG_DIR / "walkforward.toml", env={})
    assert cfg.broker.trading_cost == pytest.approx(cfg.broker.fee_rate + 5.0 / 10_000)
    path = tmp_path / "old.toml"
    path.write_text("[agents]\nfee = 0.002\nwindow = 16\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert "agents.fee" in message and "[broker].fee_rate" in message and "removed" in message
    assert "fee" not in AppConfig().agents.model_dump()  # nothing to save into a model card


def test_mars_variant_names_must_be_unique_and_conservative_ones_known(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[mars]\nconservative = ["cash", "timid"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "mars" in str(info.value) and "timid" in str(info.value)
    cfg = AppConfig()
    assert cfg.mars.names[-3:] == ("cash", "hold", "trend")
