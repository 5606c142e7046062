import BatonCore

/// What a coordinator needs to tell who sent a record: the public keys that may sign authority records, the
/// secret of the result tokens, and the two switches a namespace moving to signed records and tokens uses for
/// one release (docs/operations.md#moving-a-running-namespace-to-signed-records).
public struct CoordinatorSecurity: Sendable {
    public var trustedKeys: TrustedKeys
    public var resultTokens: ResultTokens
    /// Apply decisions, claims, operator actions and a person's signals that carry no signature (only while the
    /// records of the release before, which did not sign, may still be in flight). Signed ones are checked all the same.
    public var acceptUnsigned = false
    /// Apply results and heartbeats without a token (workers of the release before). A wrong token is refused all the same.
    public var acceptMissingTokens = false

    public init(trustedKeys: TrustedKeys, resultTokens: ResultTokens) {
        self.trustedKeys = trustedKeys
        self.resultTokens = resultTokens
    }

    /// The token the command of this attempt carries.
    public func token(for command: StepCommand) -> String {
        resultTokens.token(instanceID: command.instanceID, step: command.step, item: command.item, attempt: command.attempt, compensation: command.isCompensation)
    }

    /// Whether the sender of `event` may do what it asks of this instance; nil when it may. Pure: the same record
    /// and state give the same answer on any coordinator. `appendedAt` is the record's timestamp.
    public func admit(_ credentials: Credentials, _ event: SagaEvent, instanceID: String, state: InstanceState, workflow: Workflow, appendedAt: Int64) -> AuthorityRefusal? {
        switch credentials {
        case .none:
            return nil
        case .token(let token):
            return checkToken(token, event, instanceID: instanceID)
        case .authority(let record):
            // What the release before wrote: applied once, a resent one ignored, as then.
            if record.auth == nil, acceptUnsigned { return nil }
            switch trustedKeys.verify(record, appendedAt: appendedAt) {
            case .failure(let refusal): return refusal
            case .success(let principal): return authorize(principal, event, state: state, workflow: workflow) ?? replayed(event, state: state, workflow: workflow)
            }
        }
    }

    /// A request the instance applied already, sent again: a signed record captured and written anew (a
    /// client's own retry sends nothing twice: the server and the command line wait for the first). Another
    /// person's claim that lost a race is not this: its request was never applied (the saga ignores it). A
    /// decision closes its task, whose history then leaves the state: one sent again finds the task closed and
    /// changes nothing (ignored, as a race's loser is, which it cannot be told from).
    func replayed(_ event: SagaEvent, state: InstanceState, workflow: Workflow) -> AuthorityRefusal? {
        let request: String?
        var applied = false
        switch event {
        case .taskDecided(let step, _, _, _, _, _, let r, _), .taskClaimed(let step, _, _, _, let r, _):
            request = r
            if let r, let s = workflow.index[step] {
                applied = state.steps[s].units.contains { $0.task?.history.contains { $0.request == r } == true }
            }
        default:
            request = event.request
            applied = request.map(state.requests.contains) ?? false
        }
        guard applied, let request else { return nil }
        return AuthorityRefusal(.replayed, "request \(request) was applied already: a record sent again")
    }

    func checkToken(_ token: String?, _ event: SagaEvent, instanceID: String) -> AuthorityRefusal? {
        let address: (step: String, item: Int?, attempt: Int, compensation: Bool?)
        switch event {
        case .stepCompleted(let step, let item, let attempt, _), .stepFailed(let step, let item, let attempt, _, _): address = (step, item, attempt, false)
        case .compensationCompleted(let step, let item, let attempt), .compensationFailed(let step, let item, let attempt, _): address = (step, item, attempt, true)
        // A heartbeat does not say whether its attempt is a compensation's: either token will do.
        case .heartbeat(let step, let item, let attempt, _): address = (step, item, attempt, nil)
        default: return nil
        }
        guard let token else {
            return acceptMissingTokens ? nil : AuthorityRefusal(.badToken, "no 'token': results and heartbeats must echo their command's token")
        }
        let kinds = address.compensation.map { [$0] } ?? [false, true]
        for compensation in kinds
        where resultTokens.matches(token, instanceID: instanceID, step: address.step, item: address.item, attempt: address.attempt, compensation: compensation) {
            return nil
        }
        return AuthorityRefusal(.badToken, "the token is not the one of the command of attempt \(address.attempt) of '\(address.step)'")
    }

    /// What a verified principal may do: decide or claim a task it holds the role of (admins any, and only they
    /// override or assign a task to someone else), operate and signal as an operator or admin.
    func authorize(_ principal: Principal, _ event: SagaEvent, state: InstanceState, workflow: Workflow) -> AuthorityRefusal? {
        let who = "\(principal.subject) (roles: \(principal.roles.sorted().joined(separator: ", ")))"
        switch event {
        case .taskDecided(let step, let attempt, _, _, _, _, _, let override):
            if override, !principal.isAdmin { return AuthorityRefusal(.forbidden, "\(who) overrides a claim; only an admin may") }
            return mayDecide(principal, step: step, attempt: attempt, state: state, workflow: workflow, who: who)
        case .taskClaimed(let step, let attempt, let claimant, _, _, let override):
            if override, !principal.isAdmin { return AuthorityRefusal(.forbidden, "\(who) overrides a claim; only an admin may") }
            if let claimant, claimant != principal.subject, !principal.isAdmin {
                return AuthorityRefusal(.forbidden, "\(who) assigns the task to \(claimant); only an admin assigns a task to someone else")
            }
            return mayDecide(principal, step: step, attempt: attempt, state: state, workflow: workflow, who: who)
        case .cancel, .resume, .retry, .skip, .signal:
            return principal.isOperator ? nil : AuthorityRefusal(.forbidden, "\(who) is not an operator or admin")
        default:
            return nil
        }
    }

    func mayDecide(_ principal: Principal, step: String, attempt: Int, state: InstanceState, workflow: Workflow, who: String) -> AuthorityRefusal? {
        // No such task: the saga says why it cannot apply (closed, superseded, unknown).
        guard let s = workflow.index[step], let task = state.steps[s].units.lazy.compactMap(\.task).first(where: { $0.attempt == attempt }) else { return nil }
        return principal.mayDecide(assignee: task.assignee) ? nil : AuthorityRefusal(.forbidden, "the task is for \(task.assignee); \(who) does not hold it")
    }
}
