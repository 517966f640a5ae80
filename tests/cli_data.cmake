# `attnkit eval` on image data read with OpenCV: an image CSV and an ImageFolder tree built from the
# bundled samples, each with a corrupt file that must be skipped, named in one warning, and not
# counted (and, in the folder, a 16-bit grey PNG that must be read like its 8-bit original). Included from tests/CMakeLists.txt when the program is built.
set(_data ${CMAKE_CURRENT_BINARY_DIR}/cli-data)
set(_samples ${PROJECT_SOURCE_DIR}/weights/samples)
add_test(NAME cli.data_fixture COMMAND sh -c "rm -rf '${_data}' && mkdir -p '${_data}/csv' '${_data}/folder/Trouser' '${_data}/folder/Bag' \
  && cp '${_samples}'/*.png '${_data}/csv/' && printf 'not an image' > '${_data}/csv/broken.png' \
  && cp '${_samples}/0002-trouser.png' '${_data}/folder/Trouser/' && cp '${_samples}/0018-bag.png' '${_data}/folder/Bag/' \
  && cp '${_data}/csv/broken.png' '${_data}/folder/Bag/' \
  && ffmpeg -loglevel error -y -i '${_samples}/0002-trouser.png' -pix_fmt gray16be '${_data}/folder/Trouser/trouser-16bit.png' \
  && printf 'path,label\\n0019-t-shirt.png,0\\n0002-trouser.png,1\\n0001-pullover.png,2\\n0013-dress.png,3\\n0006-coat.png,4\\n0008-sandal.png,5\\n0004-shirt.png,6\\n0009-sneaker.png,7\\n0018-bag.png,8\\n0000-ankle-boot.png,9\\nbroken.png,3\\n' > '${_data}/csv/list.csv'")
set_tests_properties(cli.data_fixture PROPERTIES FIXTURES_SETUP cli_data)

# Labels by class index; the bundled model classifies all ten samples correctly.
attnkit_cli_test(NAME cli.eval_image_csv_skips_corrupt COMMAND attnkit_cli eval --data ${_data}/csv/list.csv --threads 2
  MATCH "skipped 1 unreadable image\\(s\\) of 11 in [^\n]*list.csv: [^\n]*broken.png.*accuracy: 100.00% \\(10/10\\)")
set_tests_properties(cli.eval_image_csv_skips_corrupt PROPERTIES FIXTURES_REQUIRED cli_data)
attnkit_cli_test(NAME cli.eval_image_folder_skips_corrupt COMMAND attnkit_cli eval --data ${_data}/folder --threads 2
  MATCH "skipped 1 unreadable image\\(s\\) of 4 [^\n]*broken.png.*data: [^\n]* \\(3 images\\).*accuracy: 100.00% \\(3/3\\)")
set_tests_properties(cli.eval_image_folder_skips_corrupt PROPERTIES FIXTURES_REQUIRED cli_data)
# A folder whose name is not one of the checkpoint's classes is a clear error, exit 1.
attnkit_cli_test(NAME cli.eval_image_folder_unknown_class
  SETUP "mkdir -p '${_data}/unknown/Spaceship' && cp '${_samples}/0018-bag.png' '${_data}/unknown/Spaceship/'"
  COMMAND attnkit_cli eval --data ${_data}/unknown EXIT 1
  MATCH "^attnkit: [^\n]*class folder 'Spaceship' is not one of the model's classes\n?$")
set_tests_properties(cli.eval_image_folder_unknown_class PROPERTIES FIXTURES_REQUIRED cli_data)
