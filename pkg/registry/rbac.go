package registry

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/pkg/auth"
)

// Role-based access in etcd.
//
// With client-certificate authentication and etcd's auth enabled, etcd
// takes a client's user name from its certificate's common name
// (auth.EtcdUser: switchyard-worker, switchyard-frontend,
// switchyard-coordinator, switchyard-client; root for the administrator).
// EnableRBAC gives each role of a cluster exactly the keys its processes
// write; everything under the cluster's prefix stays readable to every
// role:
//
//	coordinator  read-write  /<cluster>/ (placement, verdicts, election, models, jobs, gossip key)
//	worker       read-write  /<cluster>/workers/, /<cluster>/stats/, /<cluster>/jobs/
//	frontend     read-write  /<cluster>/models/, /<cluster>/frontends/ (its serving statistics)
//	client       read-write  /<cluster>/jobs/
//
// So only a coordinator's certificate can write a placement: a worker, a
// front end or the CLI cannot change what a worker holds or its epoch
// even with a valid certificate. (Within a role etcd does not tell one
// worker from another: worker w1 could overwrite workers/w2; callers
// still dial w2 expecting w2's certificate, so such a record only makes w2
// unreachable, never impersonated.)

// RBACRole is the etcd role name of a Switchyard role in a cluster.
func RBACRole(clusterName string, r auth.Role) string { return clusterName + ":" + string(r) }

// rbacGrants are the read-write prefixes of each role under /<cluster>/
// ("" is the whole prefix); every role may also read the whole prefix.
var rbacGrants = map[auth.Role][]string{
	auth.RoleCoordinator: {""},
	auth.RoleWorker:      {"workers/", "stats/", "jobs/"},
	auth.RoleFrontend:    {"models/", "frontends/"},
	auth.RoleClient:      {"jobs/"},
}

// EnableRBAC sets up etcd's users and roles for r's cluster and turns
// etcd's authentication on, if it is off: roles RBACRole(cluster, role)
// with the grants above, users auth.EtcdUser(role) (no password: client
// certificates only) holding them, and the root user (auth.EtcdRootUser)
// that etcd requires. It must run with auth still off (a fresh etcd, as
// the coordinator's embedded one at its first start) or as root. With auth
// already on it returns nil without changing anything (ErrRBACUnchecked
// when the caller is not root and cannot see the roles). Idempotent.
func (r *Registry) EnableRBAC(ctx context.Context) error {
	st, err := r.cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("registry: etcd auth status: %w", err)
	}
	if st.Enabled {
		if _, err := r.cli.RoleGet(ctx, RBACRole(r.cluster, auth.RoleWorker)); err != nil {
			if errors.Is(err, rpctypes.ErrPermissionDenied) {
				return nil // not root: the roles are the administrator's business
			}
			return fmt.Errorf("registry: etcd auth is on but role %s is missing (run as root to add it): %w", RBACRole(r.cluster, auth.RoleWorker), err)
		}
		return nil
	}
	prefix := r.key() + "/"
	exists := func(err error) bool {
		return err == nil || errors.Is(err, rpctypes.ErrRoleAlreadyExist) || errors.Is(err, rpctypes.ErrUserAlreadyExist)
	}
	noPassword := &clientv3.UserAddOptions{NoPassword: true}
	for _, role := range auth.Roles {
		name := RBACRole(r.cluster, role)
		if _, err := r.cli.RoleAdd(ctx, name); !exists(err) {
			return fmt.Errorf("registry: etcd role %s: %w", name, err)
		}
		if _, err := r.cli.RoleGrantPermission(ctx, name, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermRead)); err != nil {
			return fmt.Errorf("registry: etcd role %s: %w", name, err)
		}
		for _, sub := range rbacGrants[role] {
			k := prefix + sub
			if _, err := r.cli.RoleGrantPermission(ctx, name, k, clientv3.GetPrefixRangeEnd(k), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
				return fmt.Errorf("registry: etcd role %s: %w", name, err)
			}
		}
		user := auth.EtcdUser(role)
		if _, err := r.cli.UserAddWithOptions(ctx, user, "", noPassword); !exists(err) {
			return fmt.Errorf("registry: etcd user %s: %w", user, err)
		}
		if _, err := r.cli.UserGrantRole(ctx, user, name); err != nil {
			return fmt.Errorf("registry: etcd user %s: %w", user, err)
		}
	}
	if _, err := r.cli.UserAddWithOptions(ctx, auth.EtcdRootUser, "", noPassword); !exists(err) {
		return fmt.Errorf("registry: etcd user root: %w", err)
	}
	if _, err := r.cli.UserGrantRole(ctx, auth.EtcdRootUser, "root"); err != nil {
		return fmt.Errorf("registry: etcd user root: %w", err)
	}
	if _, err := r.cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("registry: enable etcd auth: %w", err)
	}
	return nil
}
