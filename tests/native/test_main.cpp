// Shared main: exit code 77 (ctest's SKIP_RETURN_CODE) when every selected test skipped itself,
// so a GPU suite on a machine without a GPU shows up as "Skipped" instead of a silent pass.
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  if (result == 0 && unit.test_to_run_count() > 0 && unit.skipped_test_count() == unit.test_to_run_count()) {
    return 77;
  }
  return result;
}
