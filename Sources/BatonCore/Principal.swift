/// Who acts: a person signed in to the console, a service with an API token, the bearer of a JWT from the
/// organisation's identity provider, or an operator with a key of their own. The server authenticates it; the
/// coordinator learns it from the signature of the record it sent (`AuthorityProof`), and both decide with the
/// rules below: one rule, not a copy.
public struct Principal: Sendable, Hashable, Codable {
    public var subject: String
    public var roles: Set<String>

    public init(subject: String, roles: Set<String>) {
        self.subject = subject
        self.roles = roles
    }

    public static let admin = "admin"
    public static let operatorRole = "operator"
    /// May start instances (services that start workflows), besides operators and admins.
    public static let starter = "starter"

    public var isAdmin: Bool { roles.contains(Self.admin) }
    public var isOperator: Bool { isAdmin || roles.contains(Self.operatorRole) }
    public var mayStart: Bool { isOperator || roles.contains(Self.starter) }

    /// Whether this principal may claim and decide a task assigned to `assignee` (`role:<name>` or
    /// `user:<name>`): holding that role, being that user, or being an admin.
    public func mayDecide(assignee: String) -> Bool {
        if isAdmin { return true }
        if assignee.hasPrefix("role:") { return roles.contains(String(assignee.dropFirst(5))) }
        if assignee.hasPrefix("user:") { return subject == String(assignee.dropFirst(5)) }
        return false
    }
}
