# `vlmo pretrain` end to end on a tiny model: a text corpus (stage text), resumed; a WebDataset
# shard set is covered by the unit tests. Then `vlmo demo` at a tiny step scale writes its report.
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
file(WRITE "${WORK}/tiny.json" [=[{"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32,
  "vlffn_start_layer_index": 1, "max_text_len": 16, "heads": ["mlm", "itm", "itc"]}]=])
file(WRITE "${WORK}/corpus.txt" "a man rides a horse on the beach\nthe cat sleeps on a red sofa\n\ntwo dogs play in the snow\n")
execute_process(COMMAND ${VLMO} pretrain --stage text --config ${WORK}/tiny.json --text ${WORK}/corpus.txt
                        --max-text-len 16 --steps 3 --warmup 1 --batch-size 4 --accumulate 1
                        --out ${WORK}/ck.safetensors --metrics ${WORK}/m.jsonl
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT EXISTS "${WORK}/ck.safetensors")
  message(FATAL_ERROR "pretrain failed (${rc}): ${err}")
endif()
execute_process(COMMAND ${VLMO} pretrain --stage text --config ${WORK}/tiny.json --text ${WORK}/corpus.txt
                        --max-text-len 16 --steps 5 --warmup 1 --batch-size 4 --accumulate 1
                        --out ${WORK}/ck.safetensors --metrics ${WORK}/m.jsonl --resume ${WORK}/ck.safetensors
                RESULT_VARIABLE rc ERROR_VARIABLE err)
file(STRINGS "${WORK}/m.jsonl" lines)
list(LENGTH lines n)
if(NOT rc EQUAL 0 OR NOT n EQUAL 5)
  message(FATAL_ERROR "resumed pretrain failed (${rc}, ${n} metric lines): ${err}")
endif()
list(GET lines 4 last)
string(JSON step GET "${last}" step)
string(JSON loss GET "${last}" textmlm_loss)
if(NOT step EQUAL 5)
  message(FATAL_ERROR "last metrics line is step ${step}, expected 5")
endif()
execute_process(COMMAND ${VLMO} pretrain --stage vl --config ${WORK}/tiny.json --text ${WORK}/corpus.txt --steps 1
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "stage vl on a text corpus must fail with a clear error")
endif()
message(STATUS "stage vl on text: ${err}")
execute_process(COMMAND ${VLMO} demo --step-scale 0.01 --quiet --out ${WORK}/demo RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT EXISTS "${WORK}/demo/report.json")
  message(FATAL_ERROR "demo failed (${rc}): ${err}")
endif()
file(READ "${WORK}/demo/report.json" report)
string(JSON tr1 GET "${report}" retrieval test_after_finetuning tr_r1)
string(JSON chance GET "${report}" retrieval chance tr_r1)
message(STATUS "demo at 1% steps: TR@1 ${tr1} (chance ${chance})")
