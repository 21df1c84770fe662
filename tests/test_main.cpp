#include <gtest/gtest.h>

#include "vlmo/threads.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  vlmo::init_threads(0);
  return RUN_ALL_TESTS();
}
