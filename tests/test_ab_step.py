"""tools/ab_step.py: overrides are read as written, change only the convolutions they name, and the
overridden step trains like the chosen one (same first loss), so its timings compare like with like."""

import pytest

from tools import ab_step


def test_override_is_read_as_written():
  assert ab_step.parse_override("64x128:dx=xla") == ((64, 128), 1, "xla")
  assert ab_step.parse_override("3x5:dw=elementwise") == ((3, 5), 2, "elementwise")


@pytest.mark.parametrize("text, named", [
    ("64x128", "expected CINxCOUT:PASS=FORM"),
    ("64by128:dx=xla", "expected CINxCOUT:PASS=FORM"),
    ("64x128:bwd=xla", "pass 'bwd' is not one of fwd, dx, dw"),
    ("64x128:dx=cudnn", "form 'cudnn' is not one of xla, gemm, elementwise"),
])
def test_bad_override_names_what_was_expected(text, named):
  with pytest.raises(ValueError, match="--override") as error:
    ab_step.parse_override(text)
  assert named in str(error.value)


def test_overridden_step_gives_the_same_first_loss_and_changes_only_the_named_layer():
  applied = []
  overrides = [ab_step.parse_override("64x128:dx=xla")]  # the VQ-VAE's last upsampling (polyphase 64 -> 4 x 32)
  result = ab_step.compare_steps(
      "vqvae_1x8", {ab_step.CHOSEN: None, "up2 dx by xla": lambda: ab_step.overridden_forms(overrides, applied)},
      rounds=1, steps=1)
  assert {shape for shape, _ in applied} == {(2, 2, 64, 128)}
  assert all(forms[1] == "xla" for _, forms in applied)
  losses = result["first_loss"]
  assert losses[ab_step.CHOSEN] == pytest.approx(losses["up2 dx by xla"], rel=1e-5)
  assert set(result["step_s"]) == {ab_step.CHOSEN, "up2 dx by xla"} and min(result["step_s"].values()) > 0


def test_override_matching_nothing_stops_before_timing(capsys):
  with pytest.raises(SystemExit):
    ab_step.main(["--case", "vqvae_1x8", "--override", "7x7:fwd=xla", "--rounds", "1", "--steps", "1"])
  assert "no convolution of vqvae_1x8 has these channels" in capsys.readouterr().err
