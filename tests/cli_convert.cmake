# `vlmo convert` on an official Lightning checkpoint, then loading the result into the fixture's
# model: strict fails naming the four extra tensors, non-strict succeeds and lists them.
set(out "${WORK}/converted.safetensors")
file(MAKE_DIRECTORY "${WORK}")
execute_process(COMMAND ${VLMO} convert ${SHARED}/fixtures/checkpoints/lightning.ckpt ${out}
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT EXISTS "${out}")
  message(FATAL_ERROR "convert failed (${rc}): ${err}")
endif()
set(cfg ${SHARED}/fixtures/reference/tiny-abspos/config.json)
execute_process(COMMAND ${VLMO} convert ${out} ${WORK}/strict.safetensors --config ${cfg} --strict
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "extra.bf16")
  message(FATAL_ERROR "strict load should fail naming extra.bf16 (${rc}): ${err}")
endif()
execute_process(COMMAND ${VLMO} convert ${out} ${WORK}/loose.safetensors --config ${cfg}
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT err MATCHES "extra.half")
  message(FATAL_ERROR "non-strict load should succeed listing extra.half (${rc}): ${err}")
endif()
execute_process(COMMAND ${VLMO} convert /nonexistent.pt ${WORK}/x.safetensors RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "/nonexistent.pt")
  message(FATAL_ERROR "a missing input should exit 2 naming the file (${rc}): ${err}")
endif()
