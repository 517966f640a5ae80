# Tests of `attnkit stream`, run through the program itself. Included from tests/CMakeLists.txt
# (registers the tests); each test runs this same file in script mode with -DSTEP=<step>.
#
# The clip every test streams is made here without any extra tool: 40 ASCII PPM frames written by
# CMake (an image folder source), turned into clip.avi by `attnkit stream --output`. Videos are read
# back with the program (and with ffprobe where it is installed). The GStreamer, Xvfb and Ctrl-C
# tests skip cleanly when their tool is missing.

if(NOT CMAKE_SCRIPT_MODE_FILE)

  set(_work ${CMAKE_CURRENT_BINARY_DIR}/stream)
  function(attnkit_stream_test name step)
    add_test(NAME cli.stream_${name}
      COMMAND ${CMAKE_COMMAND} -DSTEP=${step} -DATTNKIT=$<TARGET_FILE:attnkit_cli> -DWORK=${_work} ${ARGN}
              -P ${CMAKE_CURRENT_LIST_FILE})
    set_tests_properties(cli.stream_${name} PROPERTIES TIMEOUT 300 SKIP_REGULAR_EXPRESSION "SKIPPED:")
  endfunction()
  attnkit_stream_test(frames frames)
  set_tests_properties(cli.stream_frames PROPERTIES FIXTURES_SETUP stream_frames)
  attnkit_stream_test(folder_to_video folder_to_video)
  set_tests_properties(cli.stream_folder_to_video PROPERTIES FIXTURES_REQUIRED stream_frames FIXTURES_SETUP stream_clip)
  foreach(ext avi mp4 mkv)
    attnkit_stream_test(video_to_${ext} video_to_video -DEXT=${ext})
  endforeach()
  attnkit_stream_test(truncated_video truncated)
  attnkit_stream_test(gstreamer gstreamer)
  attnkit_stream_test(window_xvfb window)
  attnkit_stream_test(sigint sigint)
  attnkit_stream_test(sigterm sigterm)
  attnkit_stream_test(window_keys window_keys)
  set_tests_properties(cli.stream_video_to_avi cli.stream_video_to_mp4 cli.stream_video_to_mkv cli.stream_truncated_video
    PROPERTIES FIXTURES_REQUIRED stream_clip)
  set_tests_properties(cli.stream_window_xvfb PROPERTIES FIXTURES_REQUIRED stream_frames)
  attnkit_stream_test(missing_file bad_input "-DARGS=--source|/nonexistent/clip.avi" "-DEXPECT=no such file")
  attnkit_stream_test(absent_camera bad_input "-DARGS=--source|9" "-DEXPECT=cannot open camera 9")
  attnkit_stream_test(bad_pipeline bad_input "-DARGS=--source|nosuchelement ! appsink"
    "-DEXPECT=cannot open the GStreamer pipeline")
  attnkit_stream_test(corrupt_video bad_input "-DARGS=--source|${PROJECT_SOURCE_DIR}/README.md" "-DEXPECT=cannot open as a video")
  attnkit_stream_test(unwritable_output bad_input "-DARGS=--source|${_work}/frames|--output|/nonexistent-folder/out.avi"
    "-DEXPECT=cannot write the video here")
  set_tests_properties(cli.stream_unwritable_output PROPERTIES FIXTURES_REQUIRED stream_frames)
  # Every CAM added for pytorch-grad-cam parity runs on video (Score-CAM and Ablation-CAM at whatever
  # FPS they reach, in the summary), with eigen_smooth; one with aug_smooth.
  foreach(method hirescam xgradcam eigengradcam scorecam ablationcam)
    attnkit_cli_test(NAME cli.stream_method_${method}
      COMMAND attnkit_cli stream --source ${_work}/frames --no-display --max-frames 3 --method ${method} --eigen-smooth
              --cam-batch 16
      MATCH "model: [^\n]*, ${method} maps, " "stream: 3 frames, 0 dropped, [0-9.]+ FPS end to end")
    set_tests_properties(cli.stream_method_${method} PROPERTIES FIXTURES_REQUIRED stream_frames)
  endforeach()
  attnkit_cli_test(NAME cli.stream_aug_smooth
    COMMAND attnkit_cli stream --source ${_work}/frames --no-display --max-frames 2 --method gradcam++ --aug-smooth
    MATCH "stream: 2 frames, 0 dropped")
  set_tests_properties(cli.stream_aug_smooth PROPERTIES FIXTURES_REQUIRED stream_frames)
  return()
endif()

# ---- script mode: one step ---------------------------------------------------------------------------
set(frames_dir ${WORK}/frames)
set(pipeline_caps "video/x-raw,width=64,height=48 ! videoconvert ! appsink")

# Runs attnkit with `args`; sets rc, out (stdout) and err (stderr) in the caller.
function(run_attnkit)
  execute_process(COMMAND ${ATTNKIT} ${ARGN} RESULT_VARIABLE r OUTPUT_VARIABLE o ERROR_VARIABLE e)
  message(STATUS "attnkit ${ARGN}\n-- rc ${r}\n-- stdout: ${o}\n-- stderr: ${e}")
  set(rc "${r}" PARENT_SCOPE)
  set(out "${o}" PARENT_SCOPE)
  set(err "${e}" PARENT_SCOPE)
endfunction()

function(expect cond_text)
  if(NOT (${ARGN}))
    message(FATAL_ERROR "expected ${cond_text}")
  endif()
endfunction()

# `field` of the JSON summary in `out` into `var`.
function(summary var field)
  string(JSON v ERROR_VARIABLE json_error GET "${out}" ${field})
  if(json_error)
    message(FATAL_ERROR "stdout is not the JSON summary (${json_error}): ${out}")
  endif()
  set(${var} "${v}" PARENT_SCOPE)
endfunction()

# Streams `video` headless; expects it to decode to `n` frames of 64x48 (and ffprobe to agree).
function(expect_video video n)
  run_attnkit(stream --source ${video} --no-display --json)
  expect("${video} to stream" rc EQUAL 0)
  summary(frames frames)
  expect("${n} frames in ${video}, read back ${frames}" frames EQUAL n)
  expect("a 64x48 video" err MATCHES "64x48")
  find_program(FFPROBE ffprobe)
  if(FFPROBE)
    execute_process(COMMAND ${FFPROBE} -v error -count_frames -select_streams v:0
                            -show_entries stream=width,height,nb_read_frames -of csv=p=0 ${video}
                    OUTPUT_VARIABLE probe OUTPUT_STRIP_TRAILING_WHITESPACE)
    expect("ffprobe: 64,48,${n}, got ${probe}" probe STREQUAL "64,48,${n}")
  endif()
endfunction()

# A macro, so that return() ends the whole step.
macro(skip_without_gstreamer)
  if(err MATCHES "cannot open the GStreamer pipeline")
    message("SKIPPED: this OpenCV has no GStreamer (or the test elements are missing)")
    return()
  endif()
endmacro()

# Streams the endless live test pipeline into `video` and sends `signal` (INT, TERM) after 4 s;
# sets rc, out and err. Skips the test without timeout(1), which sends the signal, or GStreamer.
macro(stream_live_until signal video)
  find_program(TIMEOUT timeout)
  if(NOT TIMEOUT)
    message("SKIPPED: no timeout(1) to send SIG${signal}")
    return()
  endif()
  execute_process(COMMAND ${TIMEOUT} --preserve-status -s ${signal} 4 ${ATTNKIT} stream --source "videotestsrc is-live=true ! ${pipeline_caps}"
                          --no-display --output ${video} --json
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "rc ${rc}\nstdout: ${out}\nstderr: ${err}")
  skip_without_gstreamer()
endmacro()

if(STEP STREQUAL "frames")
  # 40 frames of 64x48: colour rows that scroll by one row per frame, as plain-text PPM (P3).
  file(REMOVE_RECURSE ${frames_dir})
  file(MAKE_DIRECTORY ${frames_dir})
  set(rows "")
  foreach(y RANGE 47)
    set(row "")
    foreach(x RANGE 63)
      math(EXPR r "(${x} * 4) % 256")
      math(EXPR g "(${y} * 5) % 256")
      math(EXPR b "((${x} + ${y}) * 3) % 256")
      string(APPEND row "${r} ${g} ${b} ")
    endforeach()
    list(APPEND rows "${row}")
  endforeach()
  foreach(i RANGE 39)
    list(SUBLIST rows ${i} -1 tail)
    list(SUBLIST rows 0 ${i} head)
    string(REPLACE ";" "\n" body "${tail};${head}")
    string(REPLACE "\n;" "\n" body "${body}")
    if(i LESS 10)
      set(name "0${i}")
    else()
      set(name "${i}")
    endif()
    file(WRITE ${frames_dir}/frame${name}.ppm "P3\n64 48\n255\n${body}\n")
  endforeach()

elseif(STEP STREQUAL "folder_to_video")
  file(REMOVE ${WORK}/clip.avi)
  run_attnkit(stream --source ${frames_dir} --fps 25 --no-display --output ${WORK}/clip.avi --json)
  expect("exit code 0" rc EQUAL 0)
  summary(frames frames)
  summary(dropped dropped)
  expect("40 frames" frames EQUAL 40)
  expect("no dropped frame from a folder" dropped EQUAL 0)
  file(GLOB partial ${WORK}/.*partial*)
  if(partial)
    message(FATAL_ERROR "temporary files left behind: ${partial}")
  endif()
  expect_video(${WORK}/clip.avi 40)

elseif(STEP STREQUAL "video_to_video")
  set(video ${WORK}/out.${EXT})
  file(REMOVE ${video})
  run_attnkit(stream --source ${WORK}/clip.avi --no-display --output ${video} --max-frames 20 --json)
  expect("exit code 0" rc EQUAL 0)
  summary(frames frames)
  summary(dropped dropped)
  summary(fps fps)
  summary(ms inference_ms)
  expect("20 frames" frames EQUAL 20)
  expect("no dropped frame from a file" dropped EQUAL 0)
  expect("a positive FPS and inference time" fps GREATER 0 AND ms GREATER 0)
  expect_video(${video} 20)

elseif(STEP STREQUAL "truncated")
  # Half of clip.avi: decoding stops mid-way; the output keeps the frames before it, under its name.
  file(SIZE ${WORK}/clip.avi size)
  math(EXPR half "${size} / 2")
  execute_process(COMMAND head -c ${half} ${WORK}/clip.avi OUTPUT_FILE ${WORK}/truncated.avi)
  file(REMOVE ${WORK}/kept.avi)
  run_attnkit(stream --source ${WORK}/truncated.avi --no-display --output ${WORK}/kept.avi)
  expect("exit code 1" rc EQUAL 1)
  expect("one line naming the failure and the kept video" err MATCHES "^attnkit: [^\n]*decoding stopped[^\n]*kept in [^\n]*kept.avi\n$")
  expect("a summary line" out MATCHES "\nstream: [0-9]+ frames")
  string(REGEX REPLACE ".*the ([0-9]+) frames before it.*" "\\1" kept "${err}")
  expect_video(${WORK}/kept.avi ${kept})

elseif(STEP STREQUAL "gstreamer")
  run_attnkit(stream --source "videotestsrc num-buffers=30 ! ${pipeline_caps}" --no-display --json)
  skip_without_gstreamer()
  expect("exit code 0" rc EQUAL 0)
  summary(frames frames)
  summary(dropped dropped)
  math(EXPR total "${frames} + ${dropped}")
  expect("1 to 30 frames, got ${frames} (+${dropped} dropped)" frames GREATER 0 AND total LESS_EQUAL 30)
  expect("the mode line" err MATCHES "pipeline .*: 64x48 @ .*GSTREAMER")

elseif(STEP STREQUAL "sigint")
  # A live pipeline that never ends, stopped by SIGINT after 3 s: a clean end and a playable video.
  file(REMOVE ${WORK}/interrupted.avi)
  stream_live_until(INT ${WORK}/interrupted.avi)
  expect("exit code 0 after SIGINT" rc EQUAL 0)
  summary(interrupted interrupted)
  summary(frames frames)
  expect("interrupted" interrupted STREQUAL "ON" OR interrupted STREQUAL "true")
  expect_video(${WORK}/interrupted.avi ${frames})

elseif(STEP STREQUAL "sigterm")
  # The same endless pipeline killed by SIGTERM after 4 s: the program dies as SIGTERM says
  # (128 + 15) and leaves neither the video nor its temporary file behind.
  set(dir ${WORK}/sigterm)
  file(REMOVE_RECURSE ${dir})
  file(MAKE_DIRECTORY ${dir})
  stream_live_until(TERM ${dir}/killed.avi)
  expect("exit code 143 (SIGTERM) after SIGTERM" rc EQUAL 143)
  file(GLOB left RELATIVE ${dir} ${dir}/* ${dir}/.*)
  list(LENGTH left n_left)
  expect("nothing left in the output folder (found: ${left})" n_left EQUAL 0)

elseif(STEP STREQUAL "window")
  find_program(XVFB_RUN xvfb-run)
  if(NOT XVFB_RUN)
    message("SKIPPED: xvfb-run is not installed")
    return()
  endif()
  execute_process(COMMAND ${XVFB_RUN} -a ${ATTNKIT} stream --source ${frames_dir} --max-frames 5 --json
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "rc ${rc}\nstdout: ${out}\nstderr: ${err}")
  expect("exit code 0 with a window" rc EQUAL 0)
  summary(frames frames)
  expect("5 frames shown" frames EQUAL 5)

elseif(STEP STREQUAL "window_keys")
  # The window's keys, pressed by xdotool on an endless live source: s saves a snapshot, m moves to
  # the next method, l to the next layer, space pauses, and q quits even while paused.
  find_program(XVFB_RUN xvfb-run)
  find_program(XDOTOOL xdotool)
  if(NOT XVFB_RUN OR NOT XDOTOOL)
    message("SKIPPED: xvfb-run or xdotool is not installed")
    return()
  endif()
  set(snaps ${WORK}/snapshots)
  file(REMOVE_RECURSE ${snaps})
  file(WRITE ${WORK}/keys.sh "
\"$1\" stream --source \"videotestsrc is-live=true ! ${pipeline_caps}\" --method gradcam --out ${snaps} --json > ${WORK}/keys.out 2> ${WORK}/keys.err &
pid=$!
w=$(timeout 60 ${XDOTOOL} search --sync --name 'attnkit stream' | head -n 1)
${XDOTOOL} windowfocus --sync \"$w\"
sleep 1
for k in s m l space q; do ${XDOTOOL} key \"$k\"; sleep 0.5; done
wait $pid
")
  execute_process(COMMAND ${XVFB_RUN} -a sh ${WORK}/keys.sh ${ATTNKIT} RESULT_VARIABLE rc TIMEOUT 120)
  file(READ ${WORK}/keys.out out)
  file(READ ${WORK}/keys.err err)
  message(STATUS "rc ${rc}\nstdout: ${out}\nstderr: ${err}")
  skip_without_gstreamer()
  expect("exit code 0 after q (pressed while paused)" rc EQUAL 0)
  summary(interrupted interrupted)
  expect("q is not an interruption" interrupted STREQUAL "OFF" OR interrupted STREQUAL "false")
  summary(method method)
  expect("m moved from gradcam to gradcam++" method STREQUAL "gradcam++")
  summary(layer layer)
  expect("l moved to a named layer" layer MATCHES "^layer[0-9]")
  file(GLOB shots ${snaps}/stream-*.png)
  list(LENGTH shots n)
  expect("s saved one snapshot" n EQUAL 1)
  expect("the snapshot is reported" err MATCHES "snapshot: ${snaps}/stream-")

elseif(STEP STREQUAL "bad_input")
  string(REPLACE "|" ";" ARGS "${ARGS}")  # '|'-separated: a ';' would not survive add_test
  run_attnkit(stream ${ARGS} --no-display)
  expect("exit code 1" rc EQUAL 1)
  if(NOT out STREQUAL "")
    message(FATAL_ERROR "expected nothing on stdout")
  endif()
  expect("one line on stderr with '${EXPECT}'" err MATCHES "^attnkit: [^\n]*${EXPECT}[^\n]*\n$")

else()
  message(FATAL_ERROR "unknown STEP ${STEP}")
endif()
