"""tools/same_step.py: names and source locations do not count, instructions do."""
from tools.same_step import normalized

HLO = """HloModule jit_{fn}, is_scheduled=true

FileNames
1 "/some/{tree}/vqax/train/step.py"

FunctionNames
1 "{fn}"

FileLocations
1 {{file_name_id=1 function_name_id=1 line={line}}}

StackFrames
1 {{file_location_id=1 parent_frame_id=1}}

ENTRY %main.1 (p: f32[4]) -> f32[4] {{
  %{scope}__track_codes.1 = f32[4]{{0}} {op}(%p, %p), metadata={{op_name="jit({fn})/mul" source_file="/{tree}/x.py"}}
  ROOT %mul_jit_{fn}_.2 = f32[4]{{0}} multiply(%{scope}__track_codes.1, %p), stack_frame_id=1
}}
"""


def test_names_and_locations_do_not_count_but_instructions_do():
  before = HLO.format(fn="train_step", tree="prev", line=23, scope="VQVAETask", op="add")
  after = HLO.format(fn="step", tree="house", line=97, scope="VQVAEProgram", op="add")
  changed = HLO.format(fn="step", tree="house", line=97, scope="VQVAEProgram", op="subtract")
  assert normalized(before) == normalized(after)
  assert normalized(after) != normalized(changed)
