package cli

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// agentRoleEnv makes this test binary run Main as that agent: the binary
// on disk that SIGUSR2 starts again.
const agentRoleEnv = "CLI_TEST_AGENT_ROLE"

func TestMain(m *testing.M) {
	// TestSIGUSR2HandsOver runs this binary as the agent.
	if role := os.Getenv(agentRoleEnv); role != "" {
		os.Exit(Main(Role(role), os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}
